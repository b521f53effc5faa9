// The resumable work folder of a pruning run, fingerprints and saved activations (see resume.h).
#include "optima/prune/resume.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "optima/core/error.h"
#include "optima/core/sha256.h"
#include "optima/io/checkpoint.h"
#include "optima/io/json_file.h"
#include "optima/io/output_dir.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/prune/activations.h"
#include "optima/text/calibration.h"

namespace optima {
namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFile = "state.json";
constexpr const char* kLockFile = ".lock";

// Reads up to `size` bytes at `offset`; fewer only at the end of the file.
std::string read_range(int fd, uint64_t offset, uint64_t size, const fs::path& path) {
  std::string bytes(size, '\0');
  uint64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, bytes.data() + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_io_errno(path, "read");
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

// A weight file's identity without reading all of it: name, size, the safetensors header (or the first MiB of
// another format) and 16 samples of 4 KiB spread over the data.
void hash_weight_file(Sha256& hash, const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_io_errno(path, "open");
  const auto size = static_cast<uint64_t>(fs::file_size(path));
  hash.update(path.filename().string()).update(std::to_string(size));
  uint64_t head = std::min<uint64_t>(size, 1 << 20);
  if (path.extension() == ".safetensors" && size >= 8) {
    const std::string prefix = read_range(fd, 0, 8, path);
    uint64_t header = 0;
    for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<unsigned char>(prefix[static_cast<size_t>(i)]);
    head = std::min<uint64_t>(size, 8 + std::min<uint64_t>(header, kMaxSafetensorsHeader));
  }
  hash.update(read_range(fd, 0, head, path));
  constexpr uint64_t kSamples = 16, kSample = 4096;
  for (uint64_t s = 0; s < kSamples && size > 0; ++s) hash.update(read_range(fd, size / kSamples * s, kSample, path));
  ::close(fd);
}

std::string describe_settings_difference(const nlohmann::json& saved, const nlohmann::json& current) {
  std::string out;
  std::set<std::string> keys;
  for (const auto& [k, v] : saved.items()) keys.insert(k);
  for (const auto& [k, v] : current.items()) keys.insert(k);
  for (const std::string& k : keys) {
    const std::string a = saved.contains(k) ? saved[k].dump() : "(absent)";
    const std::string b = current.contains(k) ? current[k].dump() : "(absent)";
    if (a != b) out += fmt::format("{}{} {} -> {}", out.empty() ? "" : ", ", k, a, b);
  }
  return out;
}

}  // namespace

fs::path ResumeFolder::path_for(const fs::path& out) {
  fs::path p = out;
  if (p.filename().empty()) p = p.parent_path();  // "out/" names the folder "out"
  p += ".resume";
  return p;
}

ResumeFolder::ResumeFolder(const fs::path& out) : path_(path_for(out)) {
  create();
  const fs::path lock = path_ / kLockFile;
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) fail_io_errno(lock, "create lock file");
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    keep_ = true;  // it belongs to the other run
    fail_usage(
        fmt::format("{} is in use by another optima run writing the same output; wait for it or choose "
                    "another --out",
                    path_.string()));
  }
}

ResumeFolder::ResumeFolder(const fs::path& out, Shared) : path_(path_for(out)), owner_(false) {}

void ResumeFolder::create() const {
  std::error_code ec;
  fs::create_directories(path_, ec);
  if (ec) throw Error(ErrorKind::kIo, describe(path_.string(), "cannot create the run's work folder: " + ec.message()));
}

ResumeFolder::~ResumeFolder() {
  if (!owner_) {
    // A folder this process created for itself alone (not rank 0's, which holds the lock file), now empty.
    std::error_code ignored;
    fs::remove(path_, ignored);
    return;
  }
  if (!keep_) {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

bool ResumeFolder::has_state() const {
  std::error_code ec;
  return fs::exists(path_ / kStateFile, ec);
}

nlohmann::json RunState::to_json() const {
  nlohmann::json j = {{"format", "optima-resume"},
                      {"version", kResumeFormatVersion},
                      {"fingerprint", fingerprint},
                      {"next_block", next_block}};
  if (writer) j["writer"] = *writer;
  // One process saves one file, named as a string; a job of many processes names one per process.
  if (activations.size() == 1) j["activations"] = activations.front();
  if (activations.size() > 1) j["activations"] = activations;
  if (masks) j["masks"] = *masks;
  if (allocation) j["allocation"] = *allocation;
  nlohmann::json layer_rows = nlohmann::json::array();
  for (const LayerReport& l : layers) layer_rows.push_back(l.to_json());
  j["report"] = {{"layers", layer_rows},
                 {"timings",
                  {{"total", timings.total},
                   {"forward", timings.forward},
                   {"select", timings.select},
                   {"reconstruct", timings.reconstruct},
                   {"write", timings.write}}}};
  j["files"] = files;
  return j;
}

RunState RunState::from_json(const nlohmann::json& j, const fs::path& file) {
  try {
    RunState s;
    s.fingerprint = j.at("fingerprint");
    s.next_block = j.at("next_block").get<int64_t>();
    if (j.contains("writer")) s.writer = j.at("writer");
    if (j.contains("activations")) {
      const nlohmann::json& names = j.at("activations");
      s.activations =
          names.is_array() ? names.get<std::vector<std::string>>() : std::vector<std::string>{names.get<std::string>()};
    }
    if (j.contains("masks")) s.masks = j.at("masks").get<std::string>();
    if (j.contains("allocation")) s.allocation = j.at("allocation");
    for (const nlohmann::json& l : j.at("report").at("layers")) s.layers.push_back(LayerReport::from_json(l));
    const nlohmann::json& t = j.at("report").at("timings");
    s.timings.total = t.at("total");
    s.timings.forward = t.at("forward");
    s.timings.select = t.at("select");
    s.timings.reconstruct = t.at("reconstruct");
    s.timings.write = t.at("write");
    s.files = j.at("files");
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail_input(file.string(), fmt::format("incomplete or damaged resumable state ({})", e.what()),
               "a state.json written by optima", "something else");
  }
}

RunState ResumeFolder::read_state() const {
  const fs::path file = path_ / kStateFile;
  nlohmann::json state = read_json_file(file);
  if (!state.is_object() || state.value("format", "") != "optima-resume")
    fail_input(file.string(), "not a resumable state written by optima", "\"format\": \"optima-resume\"",
               state.is_object() ? state.value("format", "(none)") : "not an object");
  const int version = state.value("version", 0);
  if (version != kResumeFormatVersion)
    fail_input(file.string(), "resumable state of another optima version; delete the folder to start over",
               std::to_string(kResumeFormatVersion), std::to_string(version));
  return RunState::from_json(state, file);
}

void ResumeFolder::write_state(const RunState& state) {
  write_text_file(path_ / kStateFile, state.to_json().dump(1) + "\n");
  std::set<std::string> named = {kStateFile, kLockFile};
  for (const auto& [name, record] : state.files.items()) named.insert(name);
  if (state.writer)
    for (const nlohmann::json& shard : state.writer->at("shards")) named.insert(shard["file"].get<std::string>());
  for (const auto& entry : fs::directory_iterator(path_)) {
    const std::string name = entry.path().filename().string();
    // Files the run still uses (the activation spill file, per-block Hessians) are kept.
    if (named.count(name) || entry.is_directory() || name.find(".spill") != std::string::npos) continue;
    std::error_code ignored;
    fs::remove(entry.path(), ignored);
  }
}

void ResumeFolder::clear() {
  for (const auto& entry : fs::directory_iterator(path_)) {
    if (entry.path().filename() == kLockFile) continue;
    std::error_code ignored;
    fs::remove_all(entry.path(), ignored);
  }
}

nlohmann::json ResumeFolder::describe_file(const std::string& name) const {
  const fs::path file = path_ / name;
  return {{"bytes", static_cast<uint64_t>(fs::file_size(file))}, {"sha256", sha256_file(file)}};
}

void ResumeFolder::verify_file(const std::string& name, const nlohmann::json& record) const {
  const fs::path file = path_ / name;
  std::error_code ec;
  if (!fs::exists(file, ec))
    fail_input(file.string(), "file of the saved state is missing; delete " + path_.string() + " to start over");
  const uint64_t expected_bytes = record.at("bytes").get<uint64_t>(), bytes = fs::file_size(file);
  if (bytes != expected_bytes)
    fail_input(file.string(), "file of the saved state has the wrong size (torn or modified)",
               std::to_string(expected_bytes) + " bytes", std::to_string(bytes) + " bytes");
  const std::string expected = record.at("sha256").get<std::string>(), found = sha256_file(file);
  if (found != expected)
    fail_input(file.string(), "file of the saved state is corrupt (SHA-256 differs)", expected, found);
}

nlohmann::json run_fingerprint(const nlohmann::json& settings, const Checkpoint& checkpoint,
                               const CalibrationSet& calibration) {
  Sha256 model;
  model.update(checkpoint.config().json().dump());
  for (const fs::path& file : checkpoint.weight_files()) hash_weight_file(model, file);
  Sha256 tokens;
  tokens.update(std::to_string(calibration.nsamples)).update(":").update(std::to_string(calibration.seqlen));
  tokens.update(calibration.ids.data(), calibration.ids.size() * sizeof(int64_t));
  return {{"settings", sha256_hex(settings.dump())},
          {"settings_json", settings},
          {"model", model.hex()},
          {"calibration", tokens.hex()}};
}

void check_fingerprint(const nlohmann::json& saved, const nlohmann::json& current, const fs::path& state_file) {
  const std::string folder = state_file.parent_path().string();
  // Each process of a job saved its own share of the activations: only a job of as many can continue them.
  const nlohmann::json saved_settings = saved.value("settings_json", nlohmann::json::object());
  const int saved_world = saved_settings.value("world_size", 1);
  const int world = current["settings_json"].value("world_size", 1);
  if (saved_world != world)
    fail_usage(fmt::format(
        "{}: the saved state was made by a job of {} process{}, and this job has {}: each process saved its own "
        "share of the calibration activations, so resume with {} process{} (WORLD_SIZE, or srun's --ntasks), or "
        "delete {} to start over",
        state_file.string(), saved_world, saved_world == 1 ? "" : "es", world, saved_world,
        saved_world == 1 ? "" : "es", folder));
  if (saved.value("settings", "") != current.value("settings", ""))
    fail_usage(fmt::format(
        "{}: the saved state was made with other settings ({}); rerun with the original "
        "settings, or delete {} to start over",
        state_file.string(),
        describe_settings_difference(saved.value("settings_json", nlohmann::json::object()), current["settings_json"]),
        folder));
  if (saved.value("model", "") != current.value("model", ""))
    fail_usage(
        fmt::format("{}: the saved state belongs to another model (config.json or the weight files differ "
                    "from the ones it was made with); delete {} to start over",
                    state_file.string(), folder));
  if (saved.value("calibration", "") != current.value("calibration", ""))
    fail_usage(
        fmt::format("{}: the saved state was calibrated on other tokens (the calibration file, tokenizer or "
                    "sampling differs); delete {} to start over",
                    state_file.string(), folder));
}

void save_activations(const ActivationStore& store, const fs::path& file) {
  std::vector<at::Tensor> batches;
  std::vector<TensorBytes> bytes;
  for (size_t i = 0; i < store.size(); ++i) {
    batches.push_back(store.get(i).contiguous());
    bytes.push_back(tensor_bytes(fmt::format("batch-{:05d}", i), batches.back()));
  }
  write_safetensors(file, bytes, {{"format", "optima-activations"}});
}

void load_activations(ActivationStore& store, const fs::path& file) {
  const auto saved = SafetensorsFile::open(file);
  if (saved->tensors().size() != store.size())
    fail_input(file.string(), "saved activations hold another number of batches", std::to_string(store.size()),
               std::to_string(saved->tensors().size()));
  for (size_t i = 0; i < store.size(); ++i) {
    const std::string name = fmt::format("batch-{:05d}", i);
    const TensorInfo* info = saved->find(name);
    if (info == nullptr) fail_input(file.string(), fmt::format("saved activations lack '{}'", name));
    const at::Tensor t = tensor_from_bytes(*info, saved->data(*info), saved->mapping());
    if (t.sizes().vec() != store.shape(i) || t.scalar_type() != store.dtype())
      fail_input(file.string(), fmt::format("saved activations '{}' have another shape or dtype", name),
                 fmt::format("{} {}", store.shape(i), c10::toString(store.dtype())),
                 fmt::format("{} {}", t.sizes().vec(), c10::toString(t.scalar_type())));
    store.set(i, t.clone());
  }
}

}  // namespace optima
