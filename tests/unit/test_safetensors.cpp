// safetensors reader and writer: round trips for every dtype, and one test per malformed-file case, each checking
// that the error names the file and the tensor and says what was expected and found. No LibTorch (part of
// optima_base_tests, which the sanitizer build runs); the tensor views of mapped files are tested in
// test_checkpoint.cpp.
#include <chrono>
#include <cstring>
#include <fstream>

#include "optima/io/safetensors.h"
#include "test_util.h"

namespace optima::test {
namespace {

// Writes a file from a literal header and `data_size` bytes of data; `declared` overrides the length prefix.
fs::path write_raw(const fs::path& path, const std::string& header, size_t data_size, int64_t declared = -1) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = declared >= 0 ? static_cast<uint64_t>(declared) : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header;
  for (size_t i = 0; i < data_size; ++i) out.put(static_cast<char>(i));
  return path;
}

void expect_input_error(const fs::path& file, const std::vector<std::string>& parts) {
  std::vector<std::string> all = parts;
  all.push_back(file.string());
  expect_error([&] { SafetensorsFile::open(file); }, ErrorKind::kInput, all);
}

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir dir;
  auto [buffers, tensors] = random_tensors_of_every_dtype();
  tensors.push_back({"scalar", DType::kF32, {}, buffers[1].data(), 4});
  tensors.push_back({"empty", DType::kF16, {0, 3}, nullptr, 0});
  auto sorted = tensors;
  sort_for_safetensors(sorted);
  write_safetensors(dir / "m.safetensors", sorted, {{"format", "pt"}, {"note", "round trip"}});
  EXPECT_FALSE(fs::exists(dir / "m.safetensors.partial"));

  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->metadata().at("note"), "round trip");
  ASSERT_EQ(file->tensors().size(), tensors.size());
  for (const TensorBytes& t : tensors) {
    const TensorInfo* info = file->find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    ASSERT_EQ(info->nbytes(), t.nbytes);
    if (t.nbytes) {
      EXPECT_EQ(std::memcmp(file->data(*info), t.data, t.nbytes), 0) << t.name;
    }
    // Wider types come first, so every tensor is aligned to its element size in the file.
    EXPECT_EQ((file->data(*info) - file->mapping()->data()) % dtype_size(t.dtype), 0) << t.name;
  }
}

TEST(Safetensors, HeaderIsPaddedAndStartsDataAligned) {
  TempDir dir;
  float value = 1.5f;
  write_safetensors(dir / "a.safetensors", {{"x", DType::kF32, {1}, &value, 4}});
  const auto file = SafetensorsFile::open(dir / "a.safetensors");
  EXPECT_EQ((file->data(file->tensors()[0]) - file->mapping()->data()) % 8, 0);
  float read = 0;
  std::memcpy(&read, file->data(file->tensors()[0]), 4);
  EXPECT_EQ(read, 1.5f);
}

TEST(Safetensors, RejectsTooSmallFile) {
  TempDir dir;
  std::ofstream(dir / "tiny.safetensors") << "abc";
  expect_input_error(dir / "tiny.safetensors", {"too small", "at least 8 bytes", "found 3 bytes"});
}

TEST(Safetensors, RejectsHeaderLengthBeyondFile) {
  TempDir dir;
  const auto f = write_raw(dir / "long.safetensors", "{}", 0, 4096);
  expect_input_error(f, {"header length runs past the end", "4096"});
}

TEST(Safetensors, RejectsAbsurdHeaderLength) {
  TempDir dir;
  const auto f = write_raw(dir / "huge.safetensors", "{}", 0, int64_t{1} << 40);
  expect_input_error(f, {"implausibly large"});
}

TEST(Safetensors, RejectsHeaderThatIsNotJson) {
  TempDir dir;
  expect_input_error(write_raw(dir / "bad.safetensors", "{\"a\": [1,", 0), {"not valid JSON"});
}

TEST(Safetensors, RejectsHeaderThatIsNotAnObject) {
  TempDir dir;
  expect_input_error(write_raw(dir / "arr.safetensors", "[1, 2, 3]", 0), {"not a JSON object", "expected an object"});
}

TEST(Safetensors, RejectsUnknownDtype) {
  TempDir dir;
  const auto f =
      write_raw(dir / "dt.safetensors", R"({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 4]}})", 4);
  expect_input_error(f, {"tensor 'w'", "unknown dtype", "\"F12\""});
}

TEST(Safetensors, RejectsShapeThatDisagreesWithByteRange) {
  TempDir dir;
  const auto f =
      write_raw(dir / "sz.safetensors", R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}})", 16);
  expect_input_error(f, {"tensor 'w'", "does not match dtype and shape", "expected 24 bytes", "found 16 bytes"});
}

TEST(Safetensors, RejectsRangeOutsideTheData) {
  TempDir dir;
  const auto f =
      write_raw(dir / "trunc.safetensors", R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 10);
  expect_input_error(f, {"tensor 'w'", "outside the data", "end <= 10"});
}

TEST(Safetensors, RejectsOverlappingRanges) {
  TempDir dir;
  const auto f = write_raw(dir / "ov.safetensors",
                           R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                           12);
  expect_input_error(f, {"tensor 'b'", "overlaps tensor 'a'", "begin >= 8", "[4, 12)"});
}

TEST(Safetensors, RejectsDuplicateNames) {
  TempDir dir;
  const auto f = write_raw(dir / "dup.safetensors",
                           R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                               "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                           8);
  expect_input_error(f, {"tensor 'a'", "more than once"});
}

TEST(Safetensors, RejectsGapsAndTrailingBytes) {
  TempDir dir;
  const auto gap =
      write_raw(dir / "gap.safetensors", R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})", 8);
  expect_input_error(gap, {"tensor 'a'", "gap", "begin == 0"});
  const auto tail =
      write_raw(dir / "tail.safetensors", R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})", 9);
  expect_input_error(tail, {"bytes no tensor refers to", "4 bytes", "9 bytes"});
}

TEST(Safetensors, RejectsMalformedEntries) {
  TempDir dir;
  expect_input_error(write_raw(dir / "e1.safetensors", R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", 4),
                     {"tensor 'a'", "'dtype' is missing"});
  expect_input_error(
      write_raw(dir / "e2.safetensors", R"({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}})", 0),
      {"tensor 'a'", "non-negative", "-1"});
  expect_input_error(
      write_raw(dir / "e3.safetensors", R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0]}})", 1),
      {"tensor 'a'", "[begin, end]"});
  expect_input_error(
      write_raw(dir / "e4.safetensors", R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 0]}})", 1),
      {"tensor 'a'", "end before begin"});
  expect_input_error(write_raw(dir / "e5.safetensors", R"({"a": 5})", 0), {"tensor 'a'", "not an object"});
  expect_input_error(write_raw(dir / "e6.safetensors", R"({"__metadata__": {"k": 1}})", 0),
                     {"__metadata__ key 'k'", "not a string"});
  expect_input_error(
      write_raw(dir / "e7.safetensors",
                R"({"a": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", 8),
      {"tensor 'a'", "too large"});
}

TEST(Safetensors, RejectsTheRemainingMalformedHeaders) {
  TempDir dir;
  expect_input_error(write_raw(dir / "short.safetensors", "{", 0), {"too short to be a JSON object", "found 1 bytes"});
  expect_input_error(write_raw(dir / "m1.safetensors", R"({"__metadata__": [1]})", 0),
                     {"__metadata__ is not an object", "found array"});
  expect_input_error(
      write_raw(dir / "m2.safetensors", R"({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 1]}})", 1),
      {"tensor 'a'", "dtype is not a string", "found 7"});
  expect_input_error(
      write_raw(dir / "m3.safetensors", R"({"a": {"dtype": "U8", "shape": 1, "data_offsets": [0, 1]}})", 1),
      {"tensor 'a'", "shape is not an array", "found 1"});
  expect_input_error(write_raw(dir / "m4.safetensors", R"({"a": {"dtype": "U8", "data_offsets": [0, 1]}})", 1),
                     {"tensor 'a'", "'shape' is missing"});
  expect_input_error(write_raw(dir / "m5.safetensors", R"({"a": {"dtype": "U8", "shape": [1]}})", 1),
                     {"tensor 'a'", "'data_offsets' is missing"});
  expect_input_error(
      write_raw(dir / "m6.safetensors", R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}})", 1),
      {"tensor 'a'", "data_offsets[0]", "non-negative", "found -1"});
  expect_input_error(
      write_raw(dir / "m7.safetensors", R"({"a": {"dtype": "U8", "shape": [1.5], "data_offsets": [0, 1]}})", 1),
      {"tensor 'a'", "every dimension of shape", "found 1.5"});
  // Dtypes that safetensors defines but optima does not read (complex, 4-bit) are unknown, with the tensor named.
  for (const char* dtype : {"C64", "F4", "F8_E8M0"})
    expect_input_error(
        write_raw(dir / (std::string(dtype) + ".safetensors"),
                  fmt::format(R"({{"w": {{"dtype": "{}", "shape": [1], "data_offsets": [0, 8]}}}})", dtype), 8),
        {"tensor 'w'", "unknown dtype", dtype});
}

// A file truncated, extended or rewritten after it was opened (and its header checked) is noticed before its bytes
// are used again.
TEST(Safetensors, NoticesAFileThatChangesAfterOpening) {
  TempDir dir;
  std::vector<float> values(256, 1.0f);
  write_safetensors(dir / "a.safetensors", {{"x", DType::kF32, {256}, values.data(), 1024}});
  const auto size = fs::file_size(dir / "a.safetensors");
  const auto file = SafetensorsFile::open(dir / "a.safetensors");
  EXPECT_NO_THROW(file->mapping()->check_unchanged());
  fs::resize_file(dir / "a.safetensors", size - 512);
  expect_error([&] { file->mapping()->check_unchanged(); }, ErrorKind::kInput,
               {(dir / "a.safetensors").string(), "changed size", fmt::format("expected {} bytes", size),
                fmt::format("found {} bytes", size - 512)});
  fs::resize_file(dir / "a.safetensors", size + 8);
  expect_error([&] { file->mapping()->check_unchanged(); }, ErrorKind::kInput, {"changed size", "found"});
  // Same size, new contents: the modification time gives it away.
  fs::resize_file(dir / "a.safetensors", size);
  const auto again = SafetensorsFile::open(dir / "a.safetensors");
  fs::last_write_time(dir / "a.safetensors", fs::last_write_time(dir / "a.safetensors") + std::chrono::seconds(5));
  expect_error([&] { again->mapping()->check_unchanged(); }, ErrorKind::kInput,
               {(dir / "a.safetensors").string(), "modified while optima was reading it"});
}

// Reading a page that a truncation removed raises SIGBUS; optima's handler names the file and exits with the
// input-error code instead of dumping core.
TEST(SafetensorsDeathTest, ReadingATruncatedMappingNamesTheFile) {
  TempDir dir;
  std::vector<float> values(8192, 2.0f);
  write_safetensors(dir / "big.safetensors", {{"x", DType::kF32, {8192}, values.data(), values.size() * 4}});
  EXPECT_EXIT(
      {
        const auto file = SafetensorsFile::open(dir / "big.safetensors");
        fs::resize_file(dir / "big.safetensors", 0);
        volatile std::byte sink = file->mapping()->data()[file->mapping()->size() - 1];
        (void)sink;
        std::exit(0);
      },
      ::testing::ExitedWithCode(kExitInput), "big.safetensors: the file shrank while optima was reading it");
}

TEST(Safetensors, RejectsMissingFile) {
  TempDir dir;
  expect_error([&] { SafetensorsFile::open(dir / "absent.safetensors"); }, ErrorKind::kInput,
               {"absent.safetensors", "cannot open"});
}

}  // namespace
}  // namespace optima::test
