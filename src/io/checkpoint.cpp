// Opening and validating Hugging Face checkpoint directories; loading tensors on demand.
#include "optima/io/checkpoint.h"

#include <c10/util/Exception.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <set>

#include "optima/core/error.h"
#include "optima/io/json_file.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"

namespace optima {
namespace fs = std::filesystem;

int64_t CheckpointTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

constexpr const char* kSafetensorsSingle = "model.safetensors";
constexpr const char* kSafetensorsIndex = "model.safetensors.index.json";
constexpr const char* kBinSingle = "pytorch_model.bin";
constexpr const char* kBinIndex = "pytorch_model.bin.index.json";

using BinDict = std::map<std::string, at::Tensor>;

// Reads a torch.save zip archive holding a state dict. The TorchScript unpickler only rebuilds tensors and plain
// containers, so a hostile pickle cannot run code.
BinDict read_bin(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_input(path.string(), "cannot open file");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 4 || bytes[0] != 'P' || bytes[1] != 'K')
    fail_input(path.string(),
               "not a zip-format torch.save file (legacy pickle checkpoints are not supported; "
               "re-save it with torch >= 1.6 or convert it to safetensors)",
               "a zip archive",
               fmt::format("{} bytes starting with 0x{:02x}", bytes.size(), bytes.empty() ? 0 : bytes[0] & 0xff));
  c10::IValue value;
  try {
    value = torch::jit::pickle_load(bytes);
  } catch (const c10::Error& e) {
    fail_input(path.string(), fmt::format("cannot unpickle PyTorch checkpoint: {}", e.what_without_backtrace()));
  }
  if (!value.isGenericDict())
    fail_input(path.string(), "checkpoint is not a state dict", "a dict of name -> tensor", value.tagKind());
  BinDict dict;
  for (const auto& item : value.toGenericDict()) {
    if (!item.key().isString())
      fail_input(path.string(), "state dict key is not a string", "string", item.key().tagKind());
    const std::string name = item.key().toStringRef();
    if (!item.value().isTensor())
      fail_input(fmt::format("{}: entry '{}'", path.string(), name), "not a tensor", "tensor", item.value().tagKind());
    dict.emplace(name, item.value().toTensor());
  }
  return dict;
}

// Reads "weight_map" of a shard index and checks every named shard exists.
std::map<std::string, std::string> read_index(const fs::path& index_path) {
  const auto index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail_input(index_path.string(), "shard index has no 'weight_map' object", "{\"weight_map\": {name: file}}",
               index.is_object() ? "no weight_map" : json_type_name(index));
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string())
      fail_input(fmt::format("{}: weight_map['{}']", index_path.string(), name), "shard name is not a string",
                 "a file name", file.dump());
    const std::string file_name = file.get<std::string>();
    if (file_name.empty() || fs::path(file_name).has_parent_path())
      fail_input(fmt::format("{}: weight_map['{}']", index_path.string(), name),
                 "shard must be a plain file name in the model directory", "a file name", file_name);
    map.emplace(name, file_name);
  }
  if (map.empty()) fail_input(index_path.string(), "weight_map is empty", "at least one tensor", "none");
  return map;
}

}  // namespace

struct Checkpoint::Impl {
  fs::path dir;
  ModelConfig config{nlohmann::json::object(), {}};
  WeightFormat format = WeightFormat::kSafetensors;
  std::vector<fs::path> files;
  std::vector<CheckpointTensor> tensors;
  std::map<std::string, size_t, std::less<>> by_name;
  std::vector<std::shared_ptr<SafetensorsFile>> safetensors;  // one per file, kept mapped
  // .bin: the most recently used file stays loaded (sharded checkpoints are read one shard at a time).
  mutable std::mutex bin_mutex;
  mutable size_t bin_loaded = SIZE_MAX;
  mutable BinDict bin_dict;

  void add_tensor(CheckpointTensor t) {
    const std::string name = t.name;
    if (by_name.count(name))
      fail_input(files[t.file_index].string(), fmt::format("tensor '{}' is stored twice (also in {})", name,
                                                           files[tensors[by_name[name]].file_index].string()));
    by_name.emplace(name, tensors.size());
    tensors.push_back(std::move(t));
  }
};

Checkpoint::Checkpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Checkpoint::~Checkpoint() = default;
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;

Checkpoint Checkpoint::open(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail_input(dir.string(), "model directory does not exist");
  if (!fs::is_directory(dir, ec)) fail_input(dir.string(), "not a directory", "a model directory", "a file");
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  if (!fs::exists(dir / "config.json", ec))
    fail_input(dir.string(), "model directory has no config.json", "config.json and weights",
               fs::is_empty(dir, ec) ? "an empty directory" : "no config.json");
  impl->config = ModelConfig::load(dir / "config.json");

  // Which weights: safetensors first (what transformers prefers), then .bin; an index means sharded.
  std::map<std::string, std::string> weight_map;  // stored name -> file name (sharded only)
  if (fs::exists(dir / kSafetensorsIndex, ec)) {
    weight_map = read_index(dir / kSafetensorsIndex);
  } else if (fs::exists(dir / kSafetensorsSingle, ec)) {
    impl->files.push_back(dir / kSafetensorsSingle);
  } else if (fs::exists(dir / kBinIndex, ec)) {
    impl->format = WeightFormat::kPytorchBin;
    weight_map = read_index(dir / kBinIndex);
  } else if (fs::exists(dir / kBinSingle, ec)) {
    impl->format = WeightFormat::kPytorchBin;
    impl->files.push_back(dir / kBinSingle);
  } else {
    fail_input(dir.string(), "no weights found",
               fmt::format("{}, {}, {} or {}", kSafetensorsSingle, kSafetensorsIndex, kBinSingle, kBinIndex),
               "none of them");
  }
  std::map<std::string, size_t> file_index;
  if (!weight_map.empty()) {
    const fs::path index_path = dir / (impl->format == WeightFormat::kSafetensors ? kSafetensorsIndex : kBinIndex);
    for (const auto& [name, file] : weight_map) {
      if (file_index.count(file)) continue;
      if (!fs::exists(dir / file, ec))
        fail_input(index_path.string(), fmt::format("shard '{}' named for tensor '{}' is missing", file, name),
                   "the file in the model directory", "no such file");
      file_index.emplace(file, impl->files.size());
      impl->files.push_back(dir / file);
    }
  }

  // Collect tensors with their stored names.
  std::vector<CheckpointTensor> stored;
  for (size_t f = 0; f < impl->files.size(); ++f) {
    const fs::path& path = impl->files[f];
    std::set<std::string> wanted_here;
    if (!weight_map.empty())
      for (const auto& [name, file] : weight_map)
        if (file_index[file] == f) wanted_here.insert(name);
    std::set<std::string> present;
    auto take = [&](const std::string& name, DType dtype, std::vector<int64_t> shape) {
      present.insert(name);
      if (!weight_map.empty() && !wanted_here.count(name)) return;  // transformers ignores unindexed tensors too
      stored.push_back({name, name, dtype, std::move(shape), f});
    };
    if (impl->format == WeightFormat::kSafetensors) {
      auto file = SafetensorsFile::open(path);
      for (const TensorInfo& t : file->tensors()) take(t.name, t.dtype, t.shape);
      impl->safetensors.push_back(std::move(file));
    } else {
      for (const auto& [name, tensor] : read_bin(path))
        take(name, to_dtype(tensor.scalar_type(), name), tensor.sizes().vec());
    }
    for (const std::string& name : wanted_here)
      if (!present.count(name))
        fail_input(path.string(), fmt::format("tensor '{}' listed in the shard index is not in this shard", name));
  }
  if (stored.empty()) fail_input(dir.string(), "checkpoint holds no tensors");

  // Canonical names carry the base model prefix "model.". Checkpoints saved from the base model (OPT's original
  // .bin files: "decoder.layers...", a bare LlamaModel: "layers...") omit it; transformers adds it on load.
  const bool has_prefix = std::any_of(stored.begin(), stored.end(),
                                      [](const CheckpointTensor& t) { return t.name.rfind("model.", 0) == 0; });
  static const char* kBaseModelRoots[] = {"decoder.", "layers.", "embed_tokens.", "norm."};
  for (CheckpointTensor& t : stored) {
    const bool base_model_name = std::any_of(std::begin(kBaseModelRoots), std::end(kBaseModelRoots),
                                             [&](const char* root) { return t.name.rfind(root, 0) == 0; });
    if (!has_prefix && base_model_name) t.name = "model." + t.name;
    impl->add_tensor(std::move(t));
  }
  std::sort(impl->tensors.begin(), impl->tensors.end(),
            [](const CheckpointTensor& a, const CheckpointTensor& b) { return a.name < b.name; });
  impl->by_name.clear();
  for (size_t i = 0; i < impl->tensors.size(); ++i) impl->by_name.emplace(impl->tensors[i].name, i);
  return Checkpoint(std::move(impl));
}

const fs::path& Checkpoint::dir() const {
  return impl_->dir;
}
const ModelConfig& Checkpoint::config() const {
  return impl_->config;
}
WeightFormat Checkpoint::format() const {
  return impl_->format;
}
const std::vector<fs::path>& Checkpoint::weight_files() const {
  return impl_->files;
}
const std::vector<CheckpointTensor>& Checkpoint::tensors() const {
  return impl_->tensors;
}

const CheckpointTensor* Checkpoint::find(std::string_view name) const {
  auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

at::Tensor Checkpoint::load(std::string_view name) const {
  const CheckpointTensor* t = find(name);
  if (t == nullptr) fail_input(impl_->dir.string(), fmt::format("tensor '{}' is missing from the checkpoint", name));
  if (impl_->format == WeightFormat::kSafetensors) {
    const auto& file = impl_->safetensors[t->file_index];
    const TensorInfo* info = file->find(t->stored_name);
    OPTIMA_ASSERT(info != nullptr);
    // The header was validated against the file as it was when opened; hours later it may have been truncated.
    file->mapping()->check_unchanged();
    return tensor_from_bytes(*info, file->data(*info), file->mapping());
  }
  std::lock_guard<std::mutex> lock(impl_->bin_mutex);
  if (impl_->bin_loaded != t->file_index) {
    impl_->bin_dict.clear();
    impl_->bin_dict = read_bin(impl_->files[t->file_index]);
    impl_->bin_loaded = t->file_index;
  }
  return impl_->bin_dict.at(t->stored_name);
}

void Checkpoint::drop_resident_pages() const {
  for (const auto& file : impl_->safetensors)
    if (file) file->mapping()->drop_resident_pages();
}

int64_t Checkpoint::parameter_count() const {
  int64_t total = 0;
  for (const CheckpointTensor& t : impl_->tensors) total += t.numel();
  return total;
}

std::vector<std::string> model_side_files(const fs::path& dir) {
  static const char* kCandidates[] = {"config.json",
                                      "generation_config.json",
                                      "tokenizer.json",
                                      "tokenizer_config.json",
                                      "special_tokens_map.json",
                                      "tokenizer.model",
                                      "vocab.json",
                                      "merges.txt",
                                      "added_tokens.json"};
  std::vector<std::string> present;
  std::error_code ec;
  for (const char* name : kCandidates)
    if (fs::is_regular_file(dir / name, ec)) present.emplace_back(name);
  return present;
}

}  // namespace optima
