// SHA-256 through OpenSSL's EVP interface (see sha256.h).
#include "optima/core/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "optima/core/error.h"

namespace optima {

struct Sha256::Context {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Context() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
  if (!context_->ctx || EVP_DigestInit_ex(context_->ctx, EVP_sha256(), nullptr) != 1)
    throw Error(ErrorKind::kInternal, "sha256: cannot initialise an OpenSSL digest");
}

Sha256::Sha256(const Sha256& other) : context_(std::make_unique<Context>()) {
  if (!context_->ctx || EVP_MD_CTX_copy_ex(context_->ctx, other.context_->ctx) != 1)
    throw Error(ErrorKind::kInternal, "sha256: cannot copy an OpenSSL digest");
}

Sha256::~Sha256() = default;

Sha256& Sha256::update(const void* data, size_t size) {
  if (size > 0 && EVP_DigestUpdate(context_->ctx, data, size) != 1)
    throw Error(ErrorKind::kInternal, "sha256: digest update failed");
  return *this;
}

std::string Sha256::hex() const {
  Sha256 copy(*this);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(copy.context_->ctx, digest, &length) != 1)
    throw Error(ErrorKind::kInternal, "sha256: digest finalisation failed");
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * static_cast<size_t>(length));
  for (unsigned int i = 0; i < length; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  return Sha256().update(data).hex();
}

std::string sha256_file(const std::filesystem::path& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorKind::kIo, describe(path.string(), std::string("cannot open: ") + std::strerror(errno)));
  Sha256 hash;
  std::vector<char> buffer(8 << 20);
  uint64_t done = 0;
  while (done < size) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), size - done));
    const ssize_t n = ::read(fd, buffer.data(), want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int saved = errno;
      ::close(fd);
      throw Error(ErrorKind::kIo, describe(path.string(), std::string("cannot read: ") + std::strerror(saved)));
    }
    if (n == 0) break;
    hash.update(buffer.data(), static_cast<size_t>(n));
    done += static_cast<uint64_t>(n);
  }
  ::close(fd);
  if (size != UINT64_MAX && done < size)
    throw Error(ErrorKind::kIo, describe(path.string(), "file is shorter than recorded",
                                         std::to_string(size) + " bytes", std::to_string(done) + " bytes"));
  return hash.hex();
}

}  // namespace optima
