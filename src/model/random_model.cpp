// Random models of real architectures (see random_model.h).
#include "optima/model/random_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/normal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>

#include "optima/core/error.h"
#include "optima/io/checkpoint.h"
#include "optima/io/checkpoint_writer.h"
#include "optima/io/model_config.h"
#include "optima/io/output_dir.h"
#include "optima/io/tensor.h"
#include "optima/model/arch.h"

namespace optima {
namespace fs = std::filesystem;

std::vector<std::string> random_model_presets() {
  return {"opt-tiny", "llama-tiny"};
}

nlohmann::json random_model_preset(std::string_view name) {
  if (name == "opt-tiny") {
    // The OPT-125M configuration scaled down; the vocabulary stays OPT's so the real OPT tokenizer fits.
    return {{"architectures", {"OPTForCausalLM"}},
            {"model_type", "opt"},
            {"activation_function", "relu"},
            {"bos_token_id", 2},
            {"eos_token_id", 2},
            {"pad_token_id", 1},
            {"do_layer_norm_before", true},
            {"enable_bias", true},
            {"layer_norm_elementwise_affine", true},
            {"hidden_size", 64},
            {"ffn_dim", 256},
            {"num_attention_heads", 4},
            {"num_hidden_layers", 2},
            {"max_position_embeddings", 2048},
            {"vocab_size", 50272},
            {"word_embed_proj_dim", 64},
            {"init_std", 0.02},
            {"torch_dtype", "float32"}};
  }
  if (name == "llama-tiny") {
    return {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_act", "silu"},
            {"bos_token_id", 1},
            {"eos_token_id", 2},
            {"hidden_size", 64},
            {"intermediate_size", 176},
            {"num_attention_heads", 4},
            {"num_key_value_heads", 2},
            {"num_hidden_layers", 2},
            {"max_position_embeddings", 2048},
            {"vocab_size", 32000},
            {"rms_norm_eps", 1e-5},
            {"rope_theta", 10000.0},
            {"tie_word_embeddings", false},
            {"initializer_range", 0.02},
            {"torch_dtype", "float32"}};
  }
  fail_usage(fmt::format("unknown preset '{}' (expected opt-tiny or llama-tiny)", name));
}

void write_random_model(const nlohmann::json& config_json, const fs::path& out, const RandomModelOptions& options) {
  const ModelConfig config(config_json, out / "config.json");
  const ModelShape shape = read_model_shape(config);
  // The family knows only the text model's tensors; a model with others (a vision tower) would be incomplete.
  if (shape.copy_other_tensors)
    fail_input(fmt::format("{}: key 'model_type'", config.path().string()),
               "make-random writes only text models; this model has tensors beyond its family's (a vision tower)",
               "a text-only model_type", shape.model_type);
  StagedDirectory staged(out, options.overwrite);

  nlohmann::json written = config_json;
  written["torch_dtype"] = hf_dtype_name(options.dtype);
  write_text_file(staged.staging() / "config.json", written.dump(2) + "\n");

  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  CheckpointWriterOptions writer_options;
  writer_options.max_shard_bytes = options.max_shard_bytes;
  CheckpointWriter writer(staged.staging(), writer_options);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  for (const ExpectedTensor& t : expected_tensors(shape)) {
    at::Tensor value;
    switch (t.init) {
      case TensorInit::kNormal: value = at::normal(0.0, options.init_std, t.shape, generator, f32); break;
      case TensorInit::kOnes: value = at::ones(t.shape, f32); break;
      case TensorInit::kZeros: value = at::zeros(t.shape, f32); break;
    }
    writer.add(t.name, value.to(options.dtype));
  }
  writer.finish();
  if (!options.tokenizer_dir.empty()) {
    for (const std::string& name : model_side_files(options.tokenizer_dir)) {
      if (name == "config.json" || name == "generation_config.json") continue;
      std::error_code ec;
      fs::copy_file(options.tokenizer_dir / name, staged.staging() / name, fs::copy_options::overwrite_existing, ec);
      if (ec)
        throw Error(ErrorKind::kIo, describe((options.tokenizer_dir / name).string(), "cannot copy: " + ec.message()));
    }
  }
  staged.commit();
}

}  // namespace optima
