// The calibration activations between blocks: one tensor per calibration batch, kept in memory, or in a file
// mapped from disk when they exceed the memory budget (--activation-memory).
//
// On disk the batches are slices of one file mapped shared: the kernel writes them back and drops them as memory
// runs short, and release() lets it drop a batch the pipeline has finished with, so resident memory follows the
// batch in use rather than all of them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace optima {

class ActivationStore {
 public:
  // Batches of the given shapes, all of `dtype`. They are held on disk in `spill_file` (created, and removed by the
  // destructor) when their total exceeds `budget_bytes`.
  ActivationStore(std::vector<std::vector<int64_t>> shapes, at::ScalarType dtype, uint64_t budget_bytes,
                  std::filesystem::path spill_file);
  ~ActivationStore();
  ActivationStore(const ActivationStore&) = delete;
  ActivationStore& operator=(const ActivationStore&) = delete;

  size_t size() const { return shapes_.size(); }
  uint64_t bytes() const { return total_bytes_; }
  bool on_disk() const { return mapping_ != nullptr; }
  const std::vector<int64_t>& shape(size_t i) const { return shapes_.at(i); }
  at::ScalarType dtype() const { return dtype_; }

  // Batch i on the CPU (on disk: a view of the mapping, valid until the store is destroyed). Undefined before the
  // first set(i).
  at::Tensor get(size_t i) const;
  // Stores `value` (any device; shape and dtype as declared) as batch i: in memory its CPU tensor, which may share
  // the storage of `value`; on disk a copy.
  void set(size_t i, const at::Tensor& value);
  // On disk: lets the kernel write batch i back and drop it from memory. In memory: nothing.
  void release(size_t i) const;

 private:
  std::vector<std::vector<int64_t>> shapes_;
  std::vector<uint64_t> offsets_;
  at::ScalarType dtype_;
  uint64_t total_bytes_ = 0;
  std::filesystem::path spill_file_;
  std::byte* mapping_ = nullptr;
  std::vector<at::Tensor> in_memory_;
};

// The budget that --activation-memory names: "auto" is half of the memory available to the process (the smaller
// of MemAvailable and the cgroup's limit less its usage), "none" no limit, else a size such as 8GiB.
uint64_t activation_budget_bytes(const std::string& setting);

}  // namespace optima
