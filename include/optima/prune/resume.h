// Resuming a pruning run after preemption.
//
// Every run works in a folder beside its output, "<out>.resume": the checkpoint writer's staging files live there
// from the start. When SIGTERM or SIGINT stops the run between layers, it abandons the block in progress and adds
// the activations entering that block (and the masks so far) plus state.json, which records the next block, the
// report so far, the writer's files with their SHA-256, and a fingerprint of the settings, the model and the
// calibration tokens. `optima prune ... --resume` checks all of it and continues; anything stale, mismatched or
// corrupt is refused with a message that says what differs. A completed run removes the folder.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace optima {

class Checkpoint;
struct CalibrationSet;
class ActivationStore;

inline constexpr int kResumeFormatVersion = 1;

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
  nlohmann::json read_state() const;
  // Writes state.json atomically, then removes the files of the folder that it does not name (in "files" or the
  // writer's shards), which an earlier state may have used.
  void write_state(const nlohmann::json& state);
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
