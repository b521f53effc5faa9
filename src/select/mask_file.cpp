// --method masks: every layer's mask is read from a file instead of chosen, so that a mask made elsewhere (an
// earlier optima run's --save-masks, or a checkpoint pruned by another tool) can be reconstructed with OPTIMA or
// compared on equal terms. Two kinds of file are accepted:
//   - optima's masks.safetensors: "<layer>.mask", uint8 [out, ceil(in/8)], bit i of byte k = input 8k+i, 1 = pruned
//     (prune/output.h pack_mask), recognised by its "format": "optima-masks" metadata or by every name ending in
//     ".mask";
//   - a checkpoint whose zeros are the mask: "<layer>.weight" [out, in] of a floating type, as one safetensors file,
//     a sharded checkpoint's index (*.json with a "weight_map") or a model directory (any format optima reads).
// check_layers() reads every layer's entry before the run prunes anything: a missing tensor, a wrong shape or
// dtype, stray padding bits, or an N:M target the mask breaks is an input error naming the file and the tensor.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <functional>
#include <map>
#include <memory>
#include <set>

#include "optima/core/error.h"
#include "optima/io/checkpoint.h"
#include "optima/io/json_file.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/select/mask_ops.h"
#include "optima/select/selector.h"

namespace optima {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kWho = "masks selector";
constexpr std::string_view kMaskSuffix = ".mask";

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// One stored tensor of the mask file: where it is, what it is, and how to load it (a CPU tensor).
struct StoredTensor {
  fs::path file;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  std::function<at::Tensor()> load;
};

// A layer's mask and where it was read: "FILE: tensor 'NAME'", for messages.
struct StoredMask {
  at::Tensor pruned;
  std::string where;
};

// The tensors of a file (or directory) by name.
class MaskSource {
 public:
  explicit MaskSource(const fs::path& path) : path_(path) {
    std::error_code ec;
    if (fs::is_directory(path, ec))
      index_checkpoint(path);
    else if (path.extension() == ".json")
      index_shards(path);
    else
      index_file(SafetensorsFile::open(path), /*names=*/nullptr);
    if (index_.empty()) fail_input(path.string(), "holds no tensors", "a mask per prunable layer", "none");
  }

  bool packed() const { return packed_; }

  // The mask of `layer` ([out, in] bool on the CPU, true = pruned); an input error naming the file and the tensor
  // when it is missing, misshapen, of the wrong type, or has padding bits set.
  StoredMask mask(const std::string& layer, int64_t out, int64_t in) const {
    const std::string name = layer + (packed_ ? std::string(kMaskSuffix) : std::string(".weight"));
    const auto it = index_.find(name);
    if (it == index_.end())
      fail_input(path_.string(), fmt::format("no mask for layer '{}'", layer), fmt::format("tensor '{}'", name),
                 "no such tensor");
    const StoredTensor& t = it->second;
    const std::string where = fmt::format("{}: tensor '{}'", t.file.string(), name);
    return {packed_ ? unpack(t, where, out, in) : zeros_of(t, where, out, in), where};
  }

 private:
  static at::Tensor unpack(const StoredTensor& t, const std::string& where, int64_t out, int64_t in) {
    const std::vector<int64_t> expected = {out, (in + 7) / 8};
    if (t.dtype != DType::kU8 || t.shape != expected)
      fail_input(where, "packed mask of the wrong type or shape",
                 fmt::format("U8 {} (the layer's weight is [{}, {}])", shape_text(expected), out, in),
                 fmt::format("{} {}", dtype_name(t.dtype), shape_text(t.shape)));
    const at::Tensor bytes = t.load().to(at::kLong);
    const at::Tensor bits = bytes.unsqueeze(-1).bitwise_right_shift(at::arange(8, bytes.options())).bitwise_and(1);
    const at::Tensor all = bits.reshape({out, expected[1] * 8}).to(at::kBool);
    if (all.slice(1, in).any().item<bool>())
      fail_input(where, "padding bits past the last input column are set", "0",
                 fmt::format("1 in some of the last {} bits of a row", expected[1] * 8 - in));
    return all.slice(1, 0, in).contiguous();
  }

  static at::Tensor zeros_of(const StoredTensor& t, const std::string& where, int64_t out, int64_t in) {
    const std::vector<int64_t> expected = {out, in};
    if (!is_floating(t.dtype) || t.shape != expected)
      fail_input(where, "weight of the wrong type or shape to serve as a mask",
                 fmt::format("a floating type, {}", shape_text(expected)),
                 fmt::format("{} {}", dtype_name(t.dtype), shape_text(t.shape)));
    return t.load() == 0;
  }

  void index_checkpoint(const fs::path& dir) {
    auto checkpoint = std::make_shared<Checkpoint>(Checkpoint::open(dir));
    for (const CheckpointTensor& t : checkpoint->tensors()) {
      const std::string name = t.name;
      index_[name] = {checkpoint->weight_files()[t.file_index], t.dtype, t.shape,
                      [checkpoint, name] { return checkpoint->load(name); }};
    }
  }

  void index_shards(const fs::path& index_file_path) {
    const nlohmann::json index = read_json_file(index_file_path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail_input(index_file_path.string(), "shard index has no 'weight_map' object", "{\"weight_map\": {name: file}}",
                 "something else");
    std::map<std::string, std::set<std::string>> names_by_file;
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string())
        fail_input(index_file_path.string(), fmt::format("weight_map entry '{}' is not a file name", name), "a string",
                   file.dump());
      names_by_file[file.get<std::string>()].insert(name);
    }
    for (const auto& entry : names_by_file)
      index_file(SafetensorsFile::open(index_file_path.parent_path() / entry.first), &entry.second);
  }

  // Indexes `file`'s tensors (only those in `names` when given: a shard's tensors the index maps to it).
  void index_file(const std::shared_ptr<SafetensorsFile>& file, const std::set<std::string>* names) {
    const auto format = file->metadata().find("format");
    bool all_masks = !file->tensors().empty();
    for (const TensorInfo& info : file->tensors()) {
      if (names && names->count(info.name) == 0) continue;
      all_masks = all_masks && ends_with(info.name, kMaskSuffix);
      const std::string name = info.name;
      index_[name] = {file->path(), info.dtype, info.shape, [file, name] {
                        const TensorInfo* t = file->find(name);
                        return tensor_from_bytes(*t, file->data(*t), file->mapping());
                      }};
    }
    packed_ = packed_ || all_masks || (format != file->metadata().end() && format->second == "optima-masks");
  }

  fs::path path_;
  bool packed_ = false;
  std::map<std::string, StoredTensor> index_;
};

// Input error naming the file and tensor when some group of M inputs of a row has fewer than N pruned entries.
void check_n_m(const StoredMask& mask, const SparsityPattern& target) {
  const at::Tensor& pruned = mask.pruned;
  const at::Tensor per_group = pruned.reshape({pruned.size(0), -1, target.m()}).sum(-1);
  const at::Tensor short_groups = (per_group < target.n()).nonzero();
  if (short_groups.size(0) == 0) return;
  const int64_t row = short_groups[0][0].item<int64_t>(), group = short_groups[0][1].item<int64_t>();
  fail_input(mask.where,
             fmt::format("breaks the {} pattern in {} group(s); the first is row {}, inputs {}-{}", target.name(),
                         short_groups.size(0), row, group * target.m(), (group + 1) * target.m() - 1),
             fmt::format("at least {} pruned in every group of {}", target.n(), target.m()),
             fmt::format("{}", per_group[row][group].item<int64_t>()));
}

class MaskFileSelector final : public MaskSelector {
 public:
  explicit MaskFileSelector(const fs::path& path) : source_(path) {
    spdlog::info("masks from {} ({}): an unstructured target is not enforced, each layer keeps the file's sparsity",
                 path.string(), source_.packed() ? "optima's packed masks" : "the zeros of a checkpoint");
  }

  void check_layers(std::span<const LayerTarget> layers) const override {
    for (const LayerTarget& l : layers) {
      const StoredMask mask = source_.mask(l.layer, l.out_features, l.in_features);
      if (l.target.is_n_m()) {
        l.target.check_fits(l.in_features, l.layer);
        check_n_m(mask, l.target);
      }
    }
  }

  Selection select(const at::Tensor& weight, const LayerStats& stats, const SparsityPattern& target) const override {
    const at::NoGradGuard no_grad;
    check_weight(weight, kWho);
    if (stats.layer.empty()) fail(ErrorKind::kInternal, kWho, "the layer's name was not given");
    const at::Tensor w = weight.to(compute_dtype(weight));
    check_finite(w, kWho, "the weight");
    const StoredMask mask = source_.mask(stats.layer, weight.size(0), weight.size(1));
    if (target.is_n_m()) {
      target.check_fits(weight.size(1), stats.layer);
      check_n_m(mask, target);
    }
    Selection result;
    result.pruned = mask.pruned.to(weight.device());
    result.weight = w.masked_fill(result.pruned, 0);
    return result;
  }

 private:
  MaskSource source_;
};

}  // namespace

void check_mask_file_settings(const SelectorSettings& settings, const SparsityPattern& /*target*/) {
  if (settings.masks.empty())
    fail_usage("--method masks needs --masks FILE (the file to read every layer's mask from)");
  std::error_code ec;
  if (!fs::exists(settings.masks, ec))
    fail_usage(
        fmt::format("--masks {}: no such file or directory (expected optima's masks.safetensors, a "
                    "safetensors checkpoint, its index .json or a model directory)",
                    settings.masks.string()));
}

std::unique_ptr<MaskSelector> make_mask_file_selector(const SelectorSettings& settings) {
  check_mask_file_settings(settings, SparsityPattern());
  return std::make_unique<MaskFileSelector>(settings.masks);
}

}  // namespace optima
