// Checkpoint directories: sharded writing and reading back, pytorch_model.bin through LibTorch's pickler, the
// stories260k facts, the errors a broken model directory must produce, LibTorch tensor views of mapped safetensors
// data, and the size and dtype parsers of the writer.
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "optima/core/byte_size.h"
#include "optima/io/checkpoint.h"
#include "optima/io/checkpoint_writer.h"
#include "optima/io/json_file.h"
#include "optima/io/output_dir.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/model/arch.h"
#include "optima/model/inspect.h"
#include "optima/model/random_model.h"
#include "test_util.h"

namespace optima::test {
namespace {

void write_json(const fs::path& path, const nlohmann::json& json) {
  std::ofstream(path) << json.dump(2);
}

fs::path stories260k() {
  return assets_dir() / "models" / "stories260k";
}

// A tiny random OPT model written by optima itself.
fs::path make_tiny(const TempDir& dir, const std::string& preset, uint64_t max_shard = 5'000'000'000) {
  RandomModelOptions options;
  options.seed = std::random_device{}();
  options.max_shard_bytes = max_shard;
  write_random_model(random_model_preset(preset), dir / preset, options);
  return dir / preset;
}

TEST(CheckpointWriter, ShardsRespectTheCapAndReadBackExactly) {
  TempDir dir;
  std::map<std::string, at::Tensor> tensors;
  const at::ScalarType types[] = {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble};
  for (int i = 0; i < 12; ++i)
    tensors.emplace("layer." + std::to_string(i) + ".weight", at::randn({17 + i, 9}).to(types[i % 4]));
  {
    CheckpointWriterOptions options;
    options.max_shard_bytes = 2000;
    CheckpointWriter writer(dir.path(), options);
    for (const auto& [name, t] : tensors) writer.add(name, t);
    const auto files = writer.finish();
    EXPECT_GT(files.size(), 2u);
    for (const auto& f : files) {
      const auto shard = SafetensorsFile::open(f);
      uint64_t bytes = 0;
      for (const auto& t : shard->tensors()) bytes += t.nbytes();
      EXPECT_TRUE(bytes <= 2000 || shard->tensors().size() == 1) << f;
      EXPECT_EQ(shard->metadata().at("format"), "pt");
    }
  }
  for (const auto& entry : fs::directory_iterator(dir.path()))
    EXPECT_EQ(entry.path().string().find("staging"), std::string::npos) << "staging file left: " << entry.path();
  const auto index = read_json_file(dir / "model.safetensors.index.json");
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), tensors.size());

  write_json(dir / "config.json", {{"model_type", "test"}});
  const Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_TRUE(checkpoint.sharded());
  ASSERT_EQ(checkpoint.tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const at::Tensor loaded = checkpoint.load(name);
    EXPECT_EQ(loaded.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(loaded, t)) << name;
  }
}

TEST(CheckpointWriter, SingleFileWhenUnderTheCap) {
  TempDir dir;
  CheckpointWriter writer(dir.path());
  writer.add("a", at::randn({3, 3}));
  const auto files = writer.finish();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename(), "model.safetensors");
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
}

TEST(Checkpoint, ReadsPytorchBinWrittenByLibTorch) {
  TempDir dir;
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  const at::Tensor a = at::randn({4, 5}), b = at::randn({3}).to(at::kBFloat16);
  dict.insert("decoder.layers.0.fc1.weight", a);  // OPT's original files omit the "model." prefix
  dict.insert("decoder.final_layer_norm.bias", b);
  const std::vector<char> bytes = torch::jit::pickle_save(dict);
  std::ofstream(dir / "pytorch_model.bin", std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  write_json(dir / "config.json", {{"model_type", "opt"}});

  const Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(checkpoint.format(), WeightFormat::kPytorchBin);
  ASSERT_NE(checkpoint.find("model.decoder.layers.0.fc1.weight"), nullptr);
  EXPECT_TRUE(at::equal(checkpoint.load("model.decoder.layers.0.fc1.weight"), a));
  EXPECT_TRUE(at::equal(checkpoint.load("model.decoder.final_layer_norm.bias"), b));
  EXPECT_EQ(checkpoint.parameter_count(), 23);
}

TEST(Checkpoint, ReadsShardedPytorchBin) {
  TempDir dir;
  std::map<std::string, at::Tensor> all;
  nlohmann::json weight_map;
  for (int shard = 0; shard < 2; ++shard) {
    c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
    for (int i = 0; i < 3; ++i) {
      const std::string name = fmt::format("model.w{}_{}", shard, i);
      all[name] = at::randn({2, i + 1});
      dict.insert(name, all[name]);
      weight_map[name] = fmt::format("pytorch_model-0000{}-of-00002.bin", shard + 1);
    }
    const auto bytes = torch::jit::pickle_save(dict);
    std::ofstream(dir / fmt::format("pytorch_model-0000{}-of-00002.bin", shard + 1), std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  write_json(dir / "pytorch_model.bin.index.json", {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}});
  write_json(dir / "config.json", {{"model_type", "llama"}});
  const Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(checkpoint.weight_files().size(), 2u);
  for (const auto& [name, t] : all) EXPECT_TRUE(at::equal(checkpoint.load(name), t)) << name;
}

TEST(Checkpoint, RejectsLegacyOrCorruptBin) {
  TempDir dir;
  std::ofstream(dir / "pytorch_model.bin") << "\x80\x02}q\x00.";  // a bare pickle, not a zip archive
  write_json(dir / "config.json", {{"model_type", "opt"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::kInput, {"pytorch_model.bin", "zip"});
}

TEST(Checkpoint, Stories260kFacts) {
  OPTIMA_REQUIRE_ASSET(stories260k());
  const Checkpoint checkpoint = Checkpoint::open(stories260k());
  const InspectReport report = inspect_checkpoint(checkpoint);
  EXPECT_EQ(report.parameters, 260032);
  EXPECT_EQ(report.linears.size(), 35u);
  EXPECT_EQ(report.shape.num_kv_heads, 4);
  EXPECT_EQ(report.shape.head_dim, 8);
  EXPECT_EQ(report.linears[6].name, "model.layers.0.mlp.down_proj");
  EXPECT_EQ(report.linears[6].shape, (std::vector<int64_t>{64, 172}));
  EXPECT_DOUBLE_EQ(report.linears[0].zero_fraction, 0.0);

  // The same model in two shards reports the same, and every tensor is bit-identical.
  TempDir dir;
  RewriteOptions options;
  options.max_shard_bytes = 600'000;
  rewrite_checkpoint(checkpoint, dir / "sharded", options);
  const Checkpoint sharded = Checkpoint::open(dir / "sharded");
  EXPECT_EQ(sharded.weight_files().size(), 2u);
  EXPECT_TRUE(fs::exists(dir / "sharded" / "tokenizer.model"));
  const InspectReport sharded_report = inspect_checkpoint(sharded);
  EXPECT_EQ(sharded_report.parameters, 260032);
  EXPECT_EQ(sharded_report.linears.size(), 35u);
  EXPECT_EQ(to_json(sharded_report)["linears"], to_json(report)["linears"]);
  for (const auto& t : checkpoint.tensors()) EXPECT_TRUE(at::equal(sharded.load(t.name), checkpoint.load(t.name)));
}

TEST(Checkpoint, ZeroFractionIsMeasured) {
  TempDir dir;
  const fs::path model = make_tiny(dir, "opt-tiny");
  const Checkpoint checkpoint = Checkpoint::open(model);
  // Zero every other column of one layer in a rewritten copy, then measure.
  const std::string name = "model.decoder.layers.1.fc1.weight";
  StagedDirectory staged(dir / "holes", false);
  copy_model_side_files(model, staged.staging());
  CheckpointWriter writer(staged.staging());
  for (const auto& t : checkpoint.tensors()) {
    at::Tensor value = checkpoint.load(t.name).clone();
    if (t.name == name) value.slice(1, 0, value.size(1), 2).zero_();
    writer.add(t.name, value);
  }
  writer.finish();
  staged.commit();
  const InspectReport report = inspect_checkpoint(Checkpoint::open(dir / "holes"));
  for (const auto& l : report.linears)
    EXPECT_DOUBLE_EQ(l.zero_fraction, l.name + ".weight" == name ? 0.5 : 0.0) << l.name;
}

TEST(Checkpoint, RandomModelsHaveTheRealLayout) {
  TempDir dir;
  for (const std::string preset : {"opt-tiny", "llama-tiny"}) {
    const Checkpoint checkpoint = Checkpoint::open(make_tiny(dir, preset, 1'000'000));
    const ModelShape shape = read_model_shape(checkpoint.config());
    EXPECT_NO_THROW(validate_checkpoint(checkpoint, shape));
    EXPECT_EQ(checkpoint.tensors().size(), expected_tensors(shape).size()) << preset;
    EXPECT_GT(checkpoint.weight_files().size(), 1u) << preset;
    const at::Tensor w = checkpoint.load(block_prefix(shape, 0) + linear_layers(shape)[0].name + ".weight");
    EXPECT_NEAR(w.std().item<double>(), 0.02, 0.002) << preset;
  }
}

TEST(CheckpointErrors, MissingEmptyAndConfigless) {
  TempDir dir;
  expect_error([&] { Checkpoint::open(dir / "absent"); }, ErrorKind::kInput, {"absent", "does not exist"});
  fs::create_directories(dir / "empty");
  expect_error([&] { Checkpoint::open(dir / "empty"); }, ErrorKind::kInput,
               {"empty", "no config.json", "empty directory"});
  fs::create_directories(dir / "noweights");
  write_json(dir / "noweights" / "config.json", {{"model_type", "opt"}});
  expect_error([&] { Checkpoint::open(dir / "noweights"); }, ErrorKind::kInput, {"noweights", "no weights found"});
  std::ofstream(dir / "empty" / "config.json") << "{\"model_type\": ";
  expect_error([&] { Checkpoint::open(dir / "empty"); }, ErrorKind::kInput, {"config.json", "malformed JSON"});
}

TEST(CheckpointErrors, ShardNamedInIndexButAbsent) {
  TempDir dir;
  const fs::path model = make_tiny(dir, "opt-tiny", 1'000'000);
  const auto index = read_json_file(model / "model.safetensors.index.json");
  const std::string shard = index["weight_map"].begin().value().get<std::string>();
  fs::remove(model / shard);
  expect_error([&] { Checkpoint::open(model); }, ErrorKind::kInput, {"model.safetensors.index.json", shard, "missing"});
}

TEST(CheckpointErrors, TensorMissingOrWrongShapeForConfig) {
  TempDir dir;
  const fs::path model = make_tiny(dir, "opt-tiny");
  auto config = read_json_file(model / "config.json");
  config["ffn_dim"] = 128;  // the weights have 256
  write_json(model / "config.json", config);
  {
    const Checkpoint checkpoint = Checkpoint::open(model);
    expect_error([&] { validate_checkpoint(checkpoint, read_model_shape(checkpoint.config())); }, ErrorKind::kInput,
                 {"model.decoder.layers.0.fc1.weight", "does not match config.json", "[128, 64]", "[256, 64]"});
  }
  config["ffn_dim"] = 256;
  config["num_hidden_layers"] = 3;  // the weights have 2 layers
  write_json(model / "config.json", config);
  const Checkpoint checkpoint = Checkpoint::open(model);
  expect_error([&] { validate_checkpoint(checkpoint, read_model_shape(checkpoint.config())); }, ErrorKind::kInput,
               {"model.decoder.layers.2.", "is missing"});
}

// A copy of `model` whose tensor `name` is replaced by `replace(tensor)`.
fs::path rewrite_with(const fs::path& model, const fs::path& out, const std::string& name,
                      const std::function<at::Tensor(const at::Tensor&)>& replace) {
  const Checkpoint checkpoint = Checkpoint::open(model);
  StagedDirectory staged(out, false);
  copy_model_side_files(model, staged.staging());
  CheckpointWriter writer(staged.staging());
  for (const auto& t : checkpoint.tensors()) {
    const at::Tensor value = checkpoint.load(t.name);
    writer.add(t.name, t.name == name ? replace(value) : value);
  }
  writer.finish();
  staged.commit();
  return out;
}

TEST(CheckpointErrors, DtypesThatCannotBeComputedIn) {
  TempDir dir;
  const fs::path model = make_tiny(dir, "llama-tiny");
  const std::string name = "model.layers.1.mlp.up_proj.weight";
  const std::pair<at::ScalarType, const char*> cases[] = {
      {at::kFloat8_e4m3fn, "F8_E4M3"}, {at::kFloat8_e5m2, "F8_E5M2"}, {at::kInt, "I32"}, {at::kByte, "U8"}};
  for (const auto& [type, stored] : cases) {
    const fs::path copy =
        rewrite_with(model, dir / stored, name, [type = type](const at::Tensor& t) { return t.to(type); });
    const Checkpoint checkpoint = Checkpoint::open(copy);
    expect_error([&] { validate_checkpoint(checkpoint, read_model_shape(checkpoint.config())); }, ErrorKind::kInput,
                 {"model.safetensors", name, "expected F32, F16, BF16 or F64", std::string("found ") + stored});
  }
}

TEST(CheckpointErrors, WeightFileChangedAfterOpening) {
  TempDir dir;
  const fs::path model = make_tiny(dir, "opt-tiny");
  const Checkpoint checkpoint = Checkpoint::open(model);
  EXPECT_NO_THROW(checkpoint.load("model.decoder.layers.1.fc1.weight"));
  fs::resize_file(model / "model.safetensors", fs::file_size(model / "model.safetensors") / 2);
  expect_error([&] { checkpoint.load("model.decoder.layers.1.fc2.weight"); }, ErrorKind::kInput,
               {(model / "model.safetensors").string(), "changed size"});
}

TEST(OutputDirectory, RefusesExistingAndInputAndCleansUp) {
  TempDir dir;
  fs::create_directories(dir / "exists");
  expect_error([&] { StagedDirectory staged(dir / "exists", false); }, ErrorKind::kUsage, {"exists", "--overwrite"});
  expect_error([&] { StagedDirectory staged(dir / "in" / "sub", true, dir / "in"); }, ErrorKind::kUsage,
               {"input model directory"});
  fs::path staging;
  try {
    StagedDirectory staged(dir / "out", false);
    staging = staged.staging();
    write_text_file(staged.staging() / "a.txt", "partial");
    throw std::runtime_error("simulated failure");
  } catch (const std::runtime_error&) {
  }
  EXPECT_FALSE(fs::exists(staging));
  EXPECT_FALSE(fs::exists(dir / "out"));
  {
    StagedDirectory staged(dir / "exists", true);
    write_text_file(staged.staging() / "b.txt", "done");
    staged.commit();
  }
  EXPECT_TRUE(fs::exists(dir / "exists" / "b.txt"));
}

// Every dtype's bytes, viewed as a LibTorch tensor of the matching scalar type and shape without a copy.
TEST(TensorViews, EveryDtypeViewsTheMappedBytes) {
  TempDir dir;
  const TensorsOfEveryDtype every = random_tensors_of_every_dtype();  // owns the bytes
  std::vector<TensorBytes> tensors = every.tensors;
  sort_for_safetensors(tensors);
  write_safetensors(dir / "m.safetensors", tensors);
  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  for (const TensorBytes& t : tensors) {
    const TensorInfo* info = file->find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    const at::Tensor tensor = tensor_from_bytes(*info, file->data(*info), file->mapping());
    EXPECT_EQ(tensor.scalar_type(), to_scalar_type(t.dtype)) << t.name;
    EXPECT_EQ(tensor.sizes().vec(), t.shape) << t.name;
    EXPECT_EQ(tensor.data_ptr(), static_cast<const void*>(file->data(*info))) << t.name;
    EXPECT_EQ(std::memcmp(tensor.data_ptr(), t.data, t.nbytes), 0) << t.name;
  }
}

TEST(TensorViews, ZeroCopyTensorKeepsMappingAlive) {
  TempDir dir;
  std::vector<float> values = {1, 2, 3, 4};
  write_safetensors(dir / "a.safetensors", {{"x", DType::kF32, {2, 2}, values.data(), 16}});
  at::Tensor tensor;
  {
    const auto file = SafetensorsFile::open(dir / "a.safetensors");
    const TensorInfo& info = file->tensors()[0];
    tensor = tensor_from_bytes(info, file->data(info), file->mapping());
    EXPECT_EQ(tensor.data_ptr(), static_cast<const void*>(file->data(info)));  // no copy
  }
  EXPECT_EQ(tensor[1][1].item<float>(), 4.0f);  // the file object is gone; the mapping is not
  tensor.fill_(7.0f);                           // private mapping: the file itself is untouched
  const auto again = SafetensorsFile::open(dir / "a.safetensors");
  float first = 0;
  std::memcpy(&first, again->data(again->tensors()[0]), 4);
  EXPECT_EQ(first, 1.0f);
}

TEST(Parsers, ByteSizes) {
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_byte_size("500MB"), 500'000'000u);
  EXPECT_EQ(parse_byte_size("2GiB"), 2147483648u);
  EXPECT_EQ(parse_byte_size("1.5kb"), 1500u);
  EXPECT_EQ(parse_byte_size("1234"), 1234u);
  expect_error([] { parse_byte_size("12XB"); }, ErrorKind::kUsage, {"12XB", "unit"});
  expect_error([] { parse_byte_size("GB"); }, ErrorKind::kUsage, {"GB"});
  expect_error([] { parse_byte_size("0"); }, ErrorKind::kUsage, {"positive"});
}

TEST(Parsers, Dtypes) {
  EXPECT_EQ(parse_float_dtype("bf16"), at::kBFloat16);
  EXPECT_EQ(parse_float_dtype("float16"), at::kHalf);
  expect_error([] { parse_float_dtype("int8"); }, ErrorKind::kUsage, {"int8"});
  for (DType d : kAllDTypes) EXPECT_EQ(to_dtype(to_scalar_type(d), "x"), d);
  EXPECT_EQ(parse_dtype("F8_E4M3"), DType::kF8E4M3);
  EXPECT_FALSE(parse_dtype("F12").has_value());
}

}  // namespace
}  // namespace optima::test
