// Sharded safetensors checkpoint writer (see checkpoint_writer.h).
#include "optima/io/checkpoint_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <nlohmann/json.hpp>

#include "optima/core/error.h"
#include "optima/core/sha256.h"
#include "optima/io/checkpoint.h"
#include "optima/io/output_dir.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"

namespace optima {
namespace fs = std::filesystem;

struct CheckpointWriter::Shard {
  fs::path staging_path;
  int fd = -1;
  uint64_t bytes = 0;
  struct Entry {
    TensorBytes meta;  // data pointer unused; offset says where the bytes are in the staging file
    uint64_t offset;
  };
  std::vector<Entry> entries;
  Sha256 hash;        // of the staging file's bytes so far, for suspend()
  bool keep = false;  // suspended: the file outlives the writer

  ~Shard() {
    if (fd >= 0) ::close(fd);
    std::error_code ignored;
    if (!keep) fs::remove(staging_path, ignored);
  }
};

CheckpointWriter::CheckpointWriter(fs::path dir, CheckpointWriterOptions options, fs::path staging_dir)
    : dir_(std::move(dir)),
      staging_dir_(staging_dir.empty() ? dir_ : std::move(staging_dir)),
      options_(std::move(options)) {
  if (options_.max_shard_bytes == 0) fail_usage("maximum shard size must be positive");
}

CheckpointWriter::~CheckpointWriter() = default;

void CheckpointWriter::add(const std::string& name, const at::Tensor& tensor) {
  if (finished_) fail(ErrorKind::kInternal, name, "tensor added after the checkpoint was finished");
  if (shard_of_.count(name)) fail(ErrorKind::kInternal, name, "tensor written twice");
  const at::Tensor cpu = tensor.to(at::kCPU).contiguous();
  TensorBytes bytes = tensor_bytes(name, cpu);
  // Start a new shard when this tensor would push the current one past the cap (a tensor larger than the cap
  // gets a shard of its own, as transformers does).
  if (shards_.empty() ||
      (shards_.back()->bytes > 0 && shards_.back()->bytes + bytes.nbytes > options_.max_shard_bytes)) {
    auto shard = std::make_unique<Shard>();
    shard->staging_path = staging_dir_ / fmt::format(".shard-{}.staging", shards_.size());
    shard->fd = ::open(shard->staging_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (shard->fd < 0) fail_io_errno(shard->staging_path, "create staging file");
    shards_.push_back(std::move(shard));
  }
  Shard& shard = *shards_.back();
  const auto* data = static_cast<const char*>(bytes.data);
  uint64_t left = bytes.nbytes, written = 0;
  while (left > 0) {
    const ssize_t n = ::pwrite(shard.fd, data + written, left, static_cast<off_t>(shard.bytes + written));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_io_errno(shard.staging_path, fmt::format("write tensor '{}'", name));
    written += static_cast<uint64_t>(n);
    left -= static_cast<uint64_t>(n);
  }
  shard.hash.update(data, bytes.nbytes);
  bytes.data = nullptr;
  shard.entries.push_back({bytes, shard.bytes});
  shard.bytes += bytes.nbytes;
  shard_of_.emplace(name, shards_.size() - 1);
}

std::vector<fs::path> CheckpointWriter::finish() {
  if (finished_) fail(ErrorKind::kInternal, dir_.string(), "checkpoint finished twice");
  finished_ = true;
  if (shards_.empty()) fail(ErrorKind::kInternal, dir_.string(), "checkpoint has no tensors");
  const size_t count = shards_.size();
  std::vector<fs::path> written;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t total_size = 0;
  for (size_t s = 0; s < count; ++s) {
    Shard& shard = *shards_[s];
    const std::string file_name =
        count == 1 ? "model.safetensors" : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, count);
    std::vector<TensorBytes> layout;
    for (const auto& e : shard.entries) layout.push_back(e.meta);
    sort_for_safetensors(layout);
    std::map<std::string, uint64_t> offset_of;
    for (const auto& e : shard.entries) offset_of.emplace(e.meta.name, e.offset);

    const std::string header = make_safetensors_header(layout, options_.metadata);
    OutputFile out(dir_ / file_name);
    unsigned char length[8];
    uint64_t n = header.size();
    for (unsigned char& byte : length) {
      byte = static_cast<unsigned char>(n & 0xff);
      n >>= 8;
    }
    out.write(length, sizeof(length));
    out.write(header);
    for (const TensorBytes& t : layout) {
      out.copy_from(shard.fd, offset_of.at(t.name), t.nbytes, shard.staging_path);
      weight_map[t.name] = file_name;
      total_size += t.nbytes;
    }
    out.commit();
    written.push_back(dir_ / file_name);
  }
  if (count > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_size}};
    // Sorted by name, as transformers writes it.
    nlohmann::ordered_json sorted = nlohmann::ordered_json::object();
    std::map<std::string, std::string> by_name;
    for (const auto& [name, file] : weight_map.items()) by_name.emplace(name, file.get<std::string>());
    for (const auto& [name, file] : by_name) sorted[name] = file;
    index["weight_map"] = sorted;
    write_text_file(dir_ / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  shards_.clear();  // removes the staging files
  return written;
}

nlohmann::json CheckpointWriter::suspend() {
  if (finished_) fail(ErrorKind::kInternal, dir_.string(), "suspending a finished checkpoint");
  finished_ = true;
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& shard : shards_) {
    if (::fsync(shard->fd) != 0) fail_io_errno(shard->staging_path, "flush");
    nlohmann::json entries = nlohmann::json::array();
    for (const auto& e : shard->entries)
      entries.push_back({{"name", e.meta.name},
                         {"dtype", dtype_name(e.meta.dtype)},
                         {"shape", e.meta.shape},
                         {"offset", e.offset},
                         {"nbytes", e.meta.nbytes}});
    shards.push_back({{"file", shard->staging_path.filename().string()},
                      {"bytes", shard->bytes},
                      {"sha256", shard->hash.hex()},
                      {"entries", entries}});
    shard->keep = true;
  }
  return {{"shards", shards}};
}

std::unique_ptr<CheckpointWriter> CheckpointWriter::resume(fs::path dir, CheckpointWriterOptions options,
                                                           fs::path staging_dir, const nlohmann::json& state) {
  auto writer = std::make_unique<CheckpointWriter>(std::move(dir), std::move(options), std::move(staging_dir));
  for (const nlohmann::json& s : state.at("shards")) {
    auto shard = std::make_unique<Shard>();
    shard->keep = true;  // until it is verified and reopened, a failure must not delete the saved work
    shard->staging_path = writer->staging_dir_ / s.at("file").get<std::string>();
    shard->bytes = s.at("bytes").get<uint64_t>();
    shard->fd = ::open(shard->staging_path.c_str(), O_RDWR | O_CLOEXEC);
    if (shard->fd < 0) fail_io_errno(shard->staging_path, "open saved checkpoint data");
    std::vector<char> buffer(8 << 20);
    uint64_t done = 0;
    while (done < shard->bytes) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), shard->bytes - done));
      const ssize_t n = ::pread(shard->fd, buffer.data(), want, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail_io_errno(shard->staging_path, "read saved checkpoint data");
      if (n == 0)
        fail_input(shard->staging_path.string(), "saved checkpoint data is shorter than recorded",
                   std::to_string(shard->bytes) + " bytes", std::to_string(done) + " bytes");
      shard->hash.update(buffer.data(), static_cast<size_t>(n));
      done += static_cast<uint64_t>(n);
    }
    const std::string expected = s.at("sha256").get<std::string>(), found = shard->hash.hex();
    if (found != expected)
      fail_input(shard->staging_path.string(), "saved checkpoint data is corrupt (SHA-256 differs)", expected, found);
    if (::ftruncate(shard->fd, static_cast<off_t>(shard->bytes)) != 0)
      fail_io_errno(shard->staging_path, "truncate to the saved size");
    for (const nlohmann::json& e : s.at("entries")) {
      TensorBytes meta;
      meta.name = e.at("name").get<std::string>();
      const auto dtype = parse_dtype(e.at("dtype").get<std::string>());
      if (!dtype) fail_input(shard->staging_path.string(), "saved tensor has an unknown dtype");
      meta.dtype = *dtype;
      meta.shape = e.at("shape").get<std::vector<int64_t>>();
      meta.nbytes = e.at("nbytes").get<uint64_t>();
      writer->shard_of_.emplace(meta.name, writer->shards_.size());
      shard->entries.push_back({meta, e.at("offset").get<uint64_t>()});
    }
    writer->shards_.push_back(std::move(shard));
  }
  // Verified: from here on the files belong to this writer again (removed by finish(), kept by suspend()).
  for (auto& shard : writer->shards_) shard->keep = false;
  return writer;
}

void rewrite_checkpoint(const Checkpoint& checkpoint, const fs::path& out, const RewriteOptions& options) {
  StagedDirectory staged(out, options.overwrite, checkpoint.dir());
  copy_model_side_files(checkpoint.dir(), staged.staging());
  if (options.dtype) {
    auto config = checkpoint.config().json();
    config["torch_dtype"] = hf_dtype_name(*options.dtype);
    write_text_file(staged.staging() / "config.json", config.dump(2) + "\n");
  }
  CheckpointWriterOptions writer_options;
  writer_options.max_shard_bytes = options.max_shard_bytes;
  CheckpointWriter writer(staged.staging(), writer_options);
  for (const CheckpointTensor& t : checkpoint.tensors()) {
    at::Tensor tensor = checkpoint.load(t.name);
    if (options.dtype && is_floating(t.dtype)) tensor = tensor.to(*options.dtype);
    writer.add(t.name, tensor);
  }
  writer.finish();
  staged.commit();
}

void copy_model_side_files(const fs::path& from, const fs::path& to) {
  for (const std::string& name : model_side_files(from)) {
    std::error_code ec;
    fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing, ec);
    if (ec)
      throw Error(ErrorKind::kIo,
                  describe((to / name).string(), "cannot copy from " + (from / name).string() + ": " + ec.message()));
  }
}

}  // namespace optima
