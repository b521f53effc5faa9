// SHA-256 digests (OpenSSL's libcrypto): checksums of resumable state and fingerprints of the settings and inputs
// it belongs to. Integrity checks against torn or stale files, not a security boundary.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace optima {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256& other);  // a copy continues independently (a digest of a prefix, then more data)
  Sha256& operator=(const Sha256&) = delete;

  Sha256& update(const void* data, size_t size);
  Sha256& update(std::string_view text) { return update(text.data(), text.size()); }
  // Lower-case hex of the digest of everything so far; the object can keep being updated afterwards.
  std::string hex() const;

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

std::string sha256_hex(std::string_view data);
// The digest of the first `size` bytes of a file (all of it when size is UINT64_MAX); an I/O error naming the file
// when it cannot be read or is shorter.
std::string sha256_file(const std::filesystem::path& path, uint64_t size = UINT64_MAX);

}  // namespace optima
