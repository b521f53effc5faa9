// Resuming a pruning run after preemption.
//
// Every run works in a folder beside its output, "<out>.resume": the checkpoint writer's staging files live there
// from the start. When SIGTERM or SIGINT stops the run between layers, it abandons the block in progress and adds
// the activations entering that block (and the masks so far) plus state.json, which records the next block, the
// report so far, the writer's files with their SHA-256, and a fingerprint of the settings, the model and the
// calibration tokens. `optima prune ... --resume` checks all of it and continues; anything stale, mismatched or
// corrupt is refused with a message that says what differs. A completed run removes the folder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "optima/prune/report.h"

namespace optima {

class Checkpoint;
struct CalibrationSet;
class ActivationStore;

inline constexpr int kResumeFormatVersion = 1;

// What an interrupted run saved, as state.json holds it: the next block to prune, what identifies the run, the
// output writer's files, the activations entering the next block (one file per process), the masks so far, the
// report so far, and a checksum record of every file of the folder the state uses.
struct RunState {
  nlohmann::json fingerprint;
  int64_t next_block = 0;
  std::optional<nlohmann::json> writer;             // the checkpoint writer's suspended files (rank 0's output)
  std::vector<std::string> activations;             // per process, in rank order; none without calibration data
  std::optional<std::string> masks;                 // --save-masks: the file of the masks of blocks before next_block
  std::vector<LayerReport> layers;                  // of blocks before next_block
  std::optional<nlohmann::json> allocation;         // OWL: the per-block sparsities (BlockAllocation's form)
  RunTimings timings;                               // total, forward, select, reconstruct and write so far
  nlohmann::json files = nlohmann::json::object();  // name -> {"bytes", "sha256"}

  nlohmann::json to_json() const;
  // An input error naming `file` when a field is missing or of the wrong type.
  static RunState from_json(const nlohmann::json& j, const std::filesystem::path& file);
};

class ResumeFolder {
 public:
  static std::filesystem::path path_for(const std::filesystem::path& out);

  // Creates or opens the folder and locks it (a usage error when another run holds it).
  explicit ResumeFolder(const std::filesystem::path& out);
  // The folder as a process of a job of many sees it: rank 0 owns (creates, locks, clears and removes) it; the
  // others only read and write their own files in it, and create it only when they must write there (a folder
  // that is not shared with rank 0).
  struct Shared {};
  ResumeFolder(const std::filesystem::path& out, Shared);
  // The owner removes the folder unless keep(true) is in force; a sharer removes it only when it is empty.
  ~ResumeFolder();
  ResumeFolder(const ResumeFolder&) = delete;
  ResumeFolder& operator=(const ResumeFolder&) = delete;

  const std::filesystem::path& path() const { return path_; }
  bool has_state() const;
  // state.json, checked for its format and version (an input error naming the file otherwise).
  RunState read_state() const;
  // Writes state.json atomically, then removes the files of the folder that it does not name (in "files" or the
  // writer's shards), which an earlier state may have used.
  void write_state(const RunState& state);
  // Removes everything but the lock: the leftovers of a run killed before it could save a state.
  void clear();
  // Whether the destructor leaves the folder: true while it holds a state worth keeping (a saved one being
  // resumed, or the one an interruption just wrote).
  void keep(bool on) { keep_ = on; }

  // {"bytes", "sha256"} of a file in the folder, for state.json; and the check of such a record.
  nlohmann::json describe_file(const std::string& name) const;
  void verify_file(const std::string& name, const nlohmann::json& record) const;
  // Creates the folder if it is missing (a sharer, before it writes there).
  void create() const;

 private:
  std::filesystem::path path_;
  int lock_fd_ = -1;
  bool owner_ = true;
  bool keep_ = false;
};

// What a saved state belongs to. Each part is a SHA-256: "settings" of the result-affecting settings (kept in
// full as "settings_json" for the message), "model" of config.json and each weight file's name, size, header and
// sampled bytes (the model may be copied elsewhere, to node-local disk, and still resume), "calibration" of the
// token ids the run calibrates with.
nlohmann::json run_fingerprint(const nlohmann::json& settings, const Checkpoint& checkpoint,
                               const CalibrationSet& calibration);
// A usage error naming `state_file` and what differs when `saved` is not `current`.
void check_fingerprint(const nlohmann::json& saved, const nlohmann::json& current,
                       const std::filesystem::path& state_file);

// The activations to and from a safetensors file in the folder ("batch-00000", ...).
void save_activations(const ActivationStore& store, const std::filesystem::path& file);
void load_activations(ActivationStore& store, const std::filesystem::path& file);

}  // namespace optima
