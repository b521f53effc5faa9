// Checkpoint summaries for `optima inspect`.
#include "optima/model/inspect.h"

#include <ATen/ops/count_nonzero.h>
#include <fmt/ranges.h>

#include "optima/io/dtype.h"
#include "optima/model/family.h"

namespace optima {

InspectReport inspect_checkpoint(const Checkpoint& checkpoint) {
  InspectReport report;
  report.dir = checkpoint.dir().string();
  report.format = checkpoint.format() == WeightFormat::kSafetensors ? "safetensors" : "pytorch_model.bin";
  report.weight_files = checkpoint.weight_files().size();
  report.shape = read_model_shape(checkpoint.config());
  validate_checkpoint(checkpoint, report.shape);
  report.parameters = checkpoint.parameter_count();
  for (int64_t b = 0; b < report.shape.num_layers; ++b) {
    for (const LinearLayer& layer : linear_layers(report.shape)) {
      const std::string name = block_prefix(report.shape, b) + layer.name;
      const CheckpointTensor* info = checkpoint.find(name + ".weight");
      const at::Tensor weight = checkpoint.load(name + ".weight");
      const int64_t nonzero = at::count_nonzero(weight).item<int64_t>();
      report.linears.push_back({name, info->shape, std::string(dtype_name(info->dtype)),
                                1.0 - static_cast<double>(nonzero) / static_cast<double>(weight.numel()),
                                to_string(layer.input)});
    }
  }
  return report;
}

nlohmann::json to_json(const InspectReport& r) {
  nlohmann::json linears = nlohmann::json::array();
  for (const LinearSummary& l : r.linears)
    linears.push_back({{"name", l.name},
                       {"shape", l.shape},
                       {"dtype", l.dtype},
                       {"zero_fraction", l.zero_fraction},
                       {"input", l.input}});
  const ModelShape& s = r.shape;
  return {{"model_dir", r.dir},
          {"format", r.format},
          {"weight_files", r.weight_files},
          {"model_type", s.model_type},
          {"family", s.family->name()},
          {"num_layers", s.num_layers},
          {"hidden_size", s.hidden_size},
          {"intermediate_size", s.intermediate_size},
          {"num_heads", s.num_heads},
          {"num_kv_heads", s.num_kv_heads},
          {"head_dim", s.head_dim},
          {"vocab_size", s.vocab_size},
          {"max_positions", s.max_positions},
          {"tie_word_embeddings", s.tie_word_embeddings},
          {"parameters", r.parameters},
          {"prunable_linears", r.linears.size()},
          {"linears", linears}};
}

std::string to_text(const InspectReport& r) {
  const ModelShape& s = r.shape;
  std::string out;
  out += fmt::format("model        {}\n", r.dir);
  out += fmt::format("weights      {} ({} file{})\n", r.format, r.weight_files, r.weight_files == 1 ? "" : "s");
  out += fmt::format("model_type   {} (family {})\n", s.model_type, s.family->name());
  out += fmt::format("layers       {}\nhidden       {}\nintermediate {}\n", s.num_layers, s.hidden_size,
                     s.intermediate_size);
  out += fmt::format("heads        {} (kv {}, head_dim {})\n", s.num_heads, s.num_kv_heads, s.head_dim);
  out += fmt::format("vocabulary   {}\npositions    {}\n", s.vocab_size, s.max_positions);
  out += fmt::format("parameters   {}\n", r.parameters);
  out += fmt::format("prunable linear layers: {}\n", r.linears.size());
  size_t width = 4;
  for (const LinearSummary& l : r.linears) width = std::max(width, l.name.size());
  out += fmt::format("  {:<{}}  {:>13}  {:>5}  {:>6}  {}\n", "name", width, "shape", "dtype", "zeros", "input");
  for (const LinearSummary& l : r.linears)
    out += fmt::format("  {:<{}}  {:>13}  {:>5}  {:>6.4f}  {}\n", l.name, width,
                       fmt::format("{}", fmt::join(l.shape, "x")), l.dtype, l.zero_fraction, l.input);
  return out;
}

}  // namespace optima
