// Helpers shared by the unit tests: temporary directories, asset lookup, and error-message matchers.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "optima/core/error.h"
#include "optima/io/safetensors.h"

namespace optima::test {

namespace fs = std::filesystem;

// A seed for a test's random inputs: fresh each run, or $OPTIMA_TEST_SEED to replay a failure.
inline uint64_t fresh_seed() {
  if (const char* env = std::getenv("OPTIMA_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) | device();
}

// What a failing test prints about its seed.
inline std::string seed_note(uint64_t seed) {
  return "seed " + std::to_string(seed) + " (replay with OPTIMA_TEST_SEED=" + std::to_string(seed) + ")";
}

// A fresh directory under the system temp folder, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("optima-test-" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

// The offline assets folder: $OPTIMA_ASSETS, else the shared/assets beside the repository.
inline fs::path assets_dir() {
  if (const char* env = std::getenv("OPTIMA_ASSETS")) return env;
  return OPTIMA_ASSETS_DEFAULT;
}

inline fs::path test_data_dir() {
  if (const char* env = std::getenv("OPTIMA_TEST_DATA")) return env;
  return OPTIMA_TEST_DATA_DIR;
}

#define OPTIMA_REQUIRE_ASSET(path)                                                                         \
  do {                                                                                                     \
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "asset not found (set OPTIMA_ASSETS): " << (path); \
  } while (0)

// Runs `body`, expects an optima::Error of `kind` whose message contains every string in `parts`.
inline void expect_error(const std::function<void()>& body, ErrorKind kind, const std::vector<std::string>& parts) {
  try {
    body();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << "message: " << e.what();
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "message lacks '" << part << "': " << e.what();
    return;
  }
  ADD_FAILURE() << "expected an optima::Error";
}

// One small tensor of every safetensors dtype, named "t.<dtype>", of a random 1-5 x 1-7 shape and random bytes
// (0/1 for BOOL); the TensorBytes point into `buffers`.
struct TensorsOfEveryDtype {
  std::vector<std::vector<unsigned char>> buffers;
  std::vector<TensorBytes> tensors;
};
inline TensorsOfEveryDtype random_tensors_of_every_dtype() {
  std::mt19937_64 rng(std::random_device{}());
  TensorsOfEveryDtype out;
  for (DType dtype : kAllDTypes) {
    const std::vector<int64_t> shape = {static_cast<int64_t>(1 + rng() % 5), static_cast<int64_t>(1 + rng() % 7)};
    std::vector<unsigned char> bytes(static_cast<size_t>(shape[0] * shape[1] * dtype_size(dtype)));
    for (auto& b : bytes) b = static_cast<unsigned char>(dtype == DType::kBool ? rng() % 2 : rng());
    out.buffers.push_back(std::move(bytes));
    out.tensors.push_back(
        {"t." + std::string(dtype_name(dtype)), dtype, shape, out.buffers.back().data(), out.buffers.back().size()});
  }
  return out;
}

}  // namespace optima::test
