// The block-by-block pruning pipeline (see pruner.h): PruneRun::run() is the story of one run, over the pieces that
// each do one job: the layer step (prune/layer_step.h), the block runner (prune/block_runner.h), the output sink
// (prune/output.h), the saved state (prune/resume.h) and the report (prune/report.h).
#include "optima/prune/pruner.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/core/interrupt.h"
#include "optima/core/resources.h"
#include "optima/io/checkpoint.h"
#include "optima/io/tensor.h"
#include "optima/model/decoder.h"
#include "optima/prune/allocation.h"
#include "optima/prune/block_runner.h"
#include "optima/prune/calibration_input.h"
#include "optima/prune/distributed_steps.h"
#include "optima/prune/layer_step.h"
#include "optima/prune/output.h"
#include "optima/prune/resume.h"
#include "optima/stats/accumulator.h"

namespace optima {

namespace {

using Clock = SteadyClock;
using Site = InputSite;

// The settings a saved state must share with the run resuming it: those that change what is computed or
// written. Paths are left out (the model and calibration are identified by content instead), as are settings
// that only change how it is run (overwriting, the activation budget).
nlohmann::json resume_settings(const PrunePlan& plan, const nlohmann::json& settings) {
  nlohmann::json s = settings;
  for (const char* key : {"model", "out", "calib", "tokenizer", "activation_memory"}) s.erase(key);
  s["max_shard_size"] = plan.max_shard_size;
  s["save_masks"] = plan.save_masks;
  s["save_hessians"] = !plan.save_hessians.empty();
  s["allow_non_finite"] = plan.allow_non_finite;
  // A job of many processes saves one share of the activations per process, so its size must match; a single
  // process leaves it out, as states saved before jobs of many processes existed do.
  if (s.value("world_size", 1) == 1) s.erase("world_size");
  return s;
}

// Each process of a job of many saves its own share of the activations, under a name of its rank.
std::string activation_file_name(int64_t block, const Distributed& dist) {
  if (!dist.active()) return fmt::format("activations-block-{:04d}.safetensors", block);
  return fmt::format("activations-block-{:04d}.rank-{}.safetensors", block, dist.rank());
}

// Distinct input sites of a block in forward order.
std::vector<Site> sites_in_order(const std::vector<LinearLayer>& layers) {
  std::vector<Site> sites;
  for (const LinearLayer& l : layers)
    if (std::find(sites.begin(), sites.end(), l.input) == sites.end()) sites.push_back(l.input);
  return sites;
}

std::string site_name(Site site) {
  return std::string(to_string(site));
}

RunOptions run_options(const PrunePlan& plan) {
  RunOptions run;
  run.device = parse_device(plan.device);
  if (!plan.dtype.empty()) run.dtype = parse_float_dtype(plan.dtype);
  run.allow_non_finite = plan.allow_non_finite;
  return run;
}

double fraction_of_zeros(const at::Tensor& weight) {
  return 1.0 - static_cast<double>(at::count_nonzero(weight).item<int64_t>()) / static_cast<double>(weight.numel());
}

// One pruning run. Its members are what the steps share; each method is one step of run().
class PruneRun {
 public:
  PruneRun(const PrunePlan& plan, ProgressSink& progress, const Distributed& dist)
      : plan_(plan), progress_(progress), dist_(dist), skip_(plan.skip.empty() ? std::string("$^") : plan.skip) {}

  PruneReport run(const CalibrationSet* shared_calibration) {
    start_ = Clock::now();
    communicated_before_ = dist_.seconds_in_collectives();
    plan_.validate();
    describe_settings();
    open_model();
    layer_pruner_.emplace(plan_, dist_);
    check_layers();
    // In a job of many processes rank 0 writes the output; the others write nothing there, not even the folders.
    output_ = dist_.is_root() ? make_checkpoint_output(plan_) : make_null_output();
    open_work_folder();
    calibrate(shared_calibration);
    hold_activations();
    allocate();
    if (state_)
      restore();
    else
      begin();
    output_->copy_side_files(plan_.model);
    checkpoint_->drop_resident_pages();
    try {
      for (int64_t b = first_block_; b < shape().num_layers; ++b) {
        prune_block(b);
        if (completed_ < shape().num_layers) stop_on_signal(fmt::format("the end of block {}", b));
      }
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kInterrupted) save_state(e);
      // A failed resumed run leaves the saved state as it found it, to be resumed again once the cause is fixed.
      if (state_) output_->abandon();
      throw;
    }
    finish();
    return std::move(report_);
  }

 private:
  const ModelShape& shape() const { return model_->shape(); }
  bool calibrated() const { return !calibration_.ids.empty(); }

  void describe_settings() {
    report_.settings = plan_.to_json();
    dist_.check_same(report_.settings.dump(), "prune settings");
    // Part of the resume fingerprint too: a state saved by a job of W processes holds W shares of activations.
    report_.settings["world_size"] = dist_.world_size();
  }

  // The model, and the settings that need it: the layers' fit to an N:M pattern, the window length.
  void open_model() {
    checkpoint_.emplace(Checkpoint::open(plan_.model));
    model_.emplace(*checkpoint_, run_options(plan_));
    report_.model_type = shape().model_type;
    report_.num_layers = shape().num_layers;
    linears_ = linear_layers(shape());
    sites_ = sites_in_order(linears_);
    for (const LinearLayer& l : linears_)
      if (plan_.pattern.is_n_m()) plan_.pattern.check_fits(l.in_features, block_prefix(shape(), 0) + l.name);
    seqlen_ = calibration_seqlen(plan_, shape().max_positions, checkpoint_->config().path().string());
    if (plan_.seqlen == 0 && seqlen_ < kDefaultSeqlen)
      spdlog::info("calibration windows of {} tokens: the model's max_position_embeddings (default {})", seqlen_,
                   kDefaultSeqlen);
    report_.settings["seqlen"] = seqlen_;
  }

  // The run's work folder: staging files of the checkpoint, and what an interruption saves (see resume.h). In a
  // job of many processes rank 0 owns it (the lock, the writer's files, state.json) and every process keeps its
  // own share of the activations there, so it must be on a file system they all share, as the output is.
  void open_work_folder() {
    if (dist_.is_root()) {
      work_.emplace(plan_.out);
      if (work_->has_state()) {
        work_->keep(true);  // a saved state is never removed by a run that does not complete it
        if (!plan_.resume)
          fail_usage(
              fmt::format("{} holds the saved state of an interrupted run writing {}; pass --resume to "
                          "continue it, or delete that folder to start over",
                          work_->path().string(), plan_.out.string()));
        state_ = work_->read_state();
      } else {
        work_->clear();  // leftovers of a run killed before it could save anything
        if (plan_.resume)
          spdlog::info("--resume: no saved state in {}; starting from the first block", work_->path().string());
      }
    } else {
      work_.emplace(plan_.out, ResumeFolder::Shared{});
    }
    // Every process continues the state rank 0 found (and touches the folder only once rank 0 has cleared it).
    if (dist_.active()) {
      const std::string text =
          dist_.broadcast_text(state_ ? state_->to_json().dump() : std::string(), 0, "the saved state");
      if (!dist_.is_root() && !text.empty())
        state_ = RunState::from_json(nlohmann::json::parse(text), work_->path() / "state.json");
    }
  }

  void calibrate(const CalibrationSet* shared) {
    const auto t0 = Clock::now();
    if (shared) {
      OPTIMA_ASSERT(shared->seqlen == seqlen_ && shared->nsamples == plan_.nsamples);
      calibration_ = *shared;
    } else {
      calibration_ = load_plan_calibration(plan_, *checkpoint_, shape(), seqlen_);
    }
    report_.calibration = calibration_.description;
    report_.calibration_sampling = calibration_.sampling_json();
    spdlog::info("calibration: {}", calibration_.description);
    if (!calibration_.rule_reason.empty())
      spdlog::info("calibration rule {}: {}", calibration_.rule, calibration_.rule_reason);
    report_.seconds.calibration = seconds_since(t0);
    fingerprint_ = run_fingerprint(resume_settings(plan_, report_.settings), *checkpoint_, calibration_);
    report_.fingerprint = {{"settings", fingerprint_["settings"]},
                           {"model", fingerprint_["model"]},
                           {"calibration", fingerprint_["calibration"]}};
    if (state_) check_fingerprint(state_->fingerprint, fingerprint_, work_->path() / "state.json");
  }

  // Hidden states of this process's calibration windows (a job of many processes gives each its share, which may
  // be none), kept on the CPU between blocks in batches of plan.batch_size: in memory or, past the budget, in a
  // file of the work folder.
  void hold_activations() {
    windows_ = dist_.share(calibration_.nsamples);
    const int64_t windows = calibrated() ? windows_.second - windows_.first : 0;
    const std::string spill_name =
        dist_.active() ? fmt::format("activations.rank-{}.spill", dist_.rank()) : std::string("activations.spill");
    const int64_t batch = forward_batch_size(plan_.batch_size, shape(), seqlen_, windows, model_->dtype());
    if (plan_.batch_size == 0) spdlog::info("{} calibration windows per forward call (--batch-size)", batch);
    runner_.emplace(*model_, windows, seqlen_, batch, activation_budget_bytes(plan_.activation_memory),
                    work_->path() / spill_name);
    const ActivationStore& store = runner_->activations();
    const std::vector<double> held = dist_.all_reduce({static_cast<double>(store.bytes()), store.on_disk() ? 1.0 : 0.0},
                                                      ReduceOp::kSum, "the size of the activations");
    report_.activation_bytes = static_cast<int64_t>(held[0]);  // of all processes
    report_.activations_on_disk = held[1] > 0;
  }

  // What the selector can check of every layer it will prune before anything is pruned (a mask file's entries).
  void check_layers() const {
    std::vector<LayerTarget> layers;
    for (int64_t b = 0; b < shape().num_layers; ++b)
      for (const LinearLayer& l : linears_) {
        const std::string name = block_prefix(shape(), b) + l.name;
        if (!std::regex_search(name, skip_)) layers.push_back({name, l.out_features, l.in_features, plan_.pattern});
      }
    layer_pruner_->check_layers(layers);
  }

  // This process's calibration windows enter block 0.
  void embed_windows() {
    const at::Tensor ids = at::tensor(calibration_.ids, at::kLong).view({calibration_.nsamples, calibration_.seqlen});
    runner_->embed(ids.slice(0, windows_.first, windows_.second));
  }

  // OWL: every block's sparsity, from a pass over the dense model before pruning (each block's inputs are the dense
  // outputs of the block before, as in the reference), through the same runner one block at a time, so it holds
  // what the main pass holds. A resumed run takes them from its saved state: they are those the blocks already
  // written were pruned with. In a job of many processes every process prunes with rank 0's numbers.
  void allocate() {
    if (plan_.allocation == SparsityAllocation::kUniform) return;
    if (state_) {
      if (!state_->allocation)
        fail_input((work_->path() / "state.json").string(), "the saved state has no per-block sparsities",
                   "\"allocation\"", "none");
      allocation_ = BlockAllocation::from_json(*state_->allocation);
      return;
    }
    const auto t0 = Clock::now();
    embed_windows();
    std::vector<double> ratios;
    for (int64_t b = 0; b < shape().num_layers; ++b) ratios.push_back(dense_outlier_ratio(b));
    allocation_.outlier_ratio = ratios;
    allocation_.sparsity = owl_sparsities(ratios, plan_.pattern.sparsity(), plan_.owl_lambda);
    if (dist_.active())
      allocation_ = BlockAllocation::from_json(nlohmann::json::parse(
          dist_.broadcast_text(allocation_.to_json(plan_).dump(), 0, "the per-block sparsities")));
    allocation_.seconds = seconds_since(t0);
    report_.seconds.forward += allocation_.seconds;
    for (size_t b = 0; b < ratios.size(); ++b)
      spdlog::info("{}: block {} outlier ratio {:.4f}% -> sparsity {:.4f}", to_string(plan_.allocation), b,
                   allocation_.outlier_ratio[b], allocation_.sparsity[b]);
    spdlog::info("{}: dense pass over {} blocks in {:.1f} s", to_string(plan_.allocation), ratios.size(),
                 allocation_.seconds);
  }

  // Block b of the dense model: Wanda's statistic of each input site from the dense inputs, the block's outlier
  // ratio, and its dense outputs for the next block.
  double dense_outlier_ratio(int64_t b) {
    const BlockWeights block = model_->load_block(b);
    progress_.update({"dense pass", b, shape().num_layers,
                      fmt::format("block {}/{} outliers of the dense model", b + 1, shape().num_layers)});
    const c10::ScalarType dtype = plan_.hessian_dtype == StatsDtype::kFloat64 ? at::kDouble : at::kFloat;
    std::map<Site, InputStatistics> stats;
    for (const LinearLayer& l : linears_)
      if (stats.count(l.input) == 0)
        stats.emplace(l.input, InputStatistics(l.in_features, model_->options().device, false, true, dtype));
    const auto poll = [&] { poll_interrupt(fmt::format("block {} (dense pass)", b)); };
    runner_->observe(
        block, [&](Site site, const at::Tensor& x) { stats.at(site).add(x); }, poll);
    std::vector<std::pair<at::Tensor, at::Tensor>> scored;
    for (const Site& site : sites_) {
      pool_statistics(dist_, stats.at(site), fmt::format("block {}, dense statistics of {}", b, site_name(site)));
      if (stats.at(site).saw_non_finite() && !plan_.allow_non_finite)
        throw Error(ErrorKind::kNumeric, fmt::format("block {} of the dense model: the input of '{}' holds NaN or "
                                                     "Inf values, or values so large that its statistics overflow",
                                                     b, site_name(site)));
    }
    for (const LinearLayer& l : linears_)
      scored.emplace_back(block.get(l.name + ".weight"), stats.at(l.input).column_sq_norms());
    const double ratio = outlier_ratio(scored, plan_.owl_threshold);
    runner_->propagate(block, /*check_finite=*/!plan_.allow_non_finite, poll);
    checkpoint_->drop_resident_pages();
    release_free_memory();
    return ratio;
  }

  // The target of block b's layers: the run's, or the block's share under OWL.
  SparsityPattern target_of(int64_t b) const {
    if (allocation_.empty()) return plan_.pattern;
    return SparsityPattern::unstructured(allocation_.sparsity[static_cast<size_t>(b)]);
  }

  // A fresh run: the calibration windows enter block 0; the output gets the tensors outside the blocks.
  void begin() {
    const auto t0 = Clock::now();
    if (calibrated()) embed_windows();
    report_.seconds.forward += seconds_since(t0);
    output_->begin(*checkpoint_, shape(), *work_);
  }

  // A resumed run. Everything the saved state names is checked before any of it is used: in a job of many processes
  // each one checks its own share of the activations and rank 0 the rest, and all go on only when every check
  // passed (a process that refuses its share stops, and the others with it, before rank 0 touches the writer's
  // files).
  void restore() {
    const RunState& state = *state_;
    std::string mine;  // this process's share of the activations
    std::set<std::string> others;
    if (calibrated()) {
      OPTIMA_ASSERT(state.activations.size() == static_cast<size_t>(dist_.world_size()));
      for (int r = 0; r < dist_.world_size(); ++r) {
        const std::string& name = state.activations[static_cast<size_t>(r)];
        if (r == dist_.rank())
          mine = name;
        else
          others.insert(name);
      }
    }
    for (const auto& [name, record] : state.files.items())
      if (dist_.is_root() ? others.count(name) == 0 : name == mine) work_->verify_file(name, record);
    dist_.barrier("checking the saved state");
    first_block_ = completed_ = state.next_block;
    output_->restore(state, *work_);
    if (calibrated()) load_activations(runner_->activations(), work_->path() / mine);
    report_.layers = state.layers;
    report_.seconds.forward = state.timings.forward;
    report_.seconds.select = state.timings.select;
    report_.seconds.reconstruct = state.timings.reconstruct;
    report_.seconds.write = state.timings.write;
    report_.seconds_before_resume = state.timings.total;
    report_.resumed_from_block = first_block_;
    spdlog::info("resuming from {}: blocks 0-{} were pruned by an earlier run; continuing at block {}",
                 work_->path().string(), first_block_ - 1, first_block_);
  }

  // Block b: statistics, the layers' steps, the pruned block's outputs for the next block, the block written.
  void prune_block(int64_t b) {
    block_ = model_->load_block(b);
    stats_.clear();
    hessians_to_save_.clear();
    progress_.update(
        {"prune", b, shape().num_layers, fmt::format("block {}/{} statistics", b + 1, shape().num_layers)});
    if (!calibrated()) {
      for (const Site& site : sites_) prune_site(site);
    } else if (plan_.propagation == Propagation::kReference) {
      collect(sites_);
      for (const Site& site : sites_) prune_site(site);
    } else {
      for (const Site& site : sites_) {
        collect({site});
        prune_site(site);
      }
    }
    // Not interruptible: a state must never hold some batches before this block and some after it.
    auto t0 = Clock::now();
    runner_->propagate(block_, /*check_finite=*/!plan_.allow_non_finite);
    report_.seconds.forward += seconds_since(t0);
    t0 = Clock::now();
    output_->write_block(*checkpoint_, shape(), block_);
    output_->add_hessians(b, hessians_to_save_);
    report_.seconds.write += seconds_since(t0);
    completed_ = b + 1;
    release_block(b);
  }

  // Runs every calibration batch through the block as it is now, accumulating the statistics of `wanted` sites.
  void collect(const std::vector<Site>& wanted) {
    const auto t0 = Clock::now();
    const int64_t b = block_.index;
    const bool norms = layer_pruner_->selector_info().needs_norms();
    const c10::ScalarType dtype = plan_.hessian_dtype == StatsDtype::kFloat64 ? at::kDouble : at::kFloat;
    for (const Site& site : wanted) {
      const auto first = std::find_if(linears_.begin(), linears_.end(), [&](const auto& l) { return l.input == site; });
      stats_.erase(site);
      stats_.emplace(site, InputStatistics(first->in_features, model_->options().device, true, norms, dtype));
    }
    const auto is_wanted = [&](const Site& site) {
      return std::find(wanted.begin(), wanted.end(), site) != wanted.end();
    };
    runner_->observe(
        block_,
        [&](Site site, const at::Tensor& x) {
          if (is_wanted(site)) stats_.at(site).add(x);
        },
        [&] { poll_interrupt(fmt::format("block {} (statistics)", b)); });
    for (const Site& site : wanted)
      pool_statistics(dist_, stats_.at(site), fmt::format("block {}, statistics of {}", b, site_name(site)));
    report_.seconds.forward += seconds_since(t0);
    for (const Site& site : sites_)  // in forward order: the first site that went wrong is named
      if (is_wanted(site) && stats_.at(site).saw_non_finite() && !plan_.allow_non_finite)
        throw Error(ErrorKind::kNumeric, fmt::format("block {}: the input of '{}' holds NaN or Inf values, or "
                                                     "values so large that its statistics overflow (stop here, or "
                                                     "pass --allow-non-finite to leave such layers dense)",
                                                     b, site_name(site)));
  }

  void prune_site(const Site& site) {
    for (const LinearLayer& layer : linears_)
      if (layer.input == site) prune_layer(layer);
    if (!plan_.save_hessians.empty() && calibrated())
      hessians_to_save_.emplace(block_prefix(shape(), block_.index) + site_name(site),
                                stats_.at(site).hessian().cpu().contiguous());
  }

  void prune_layer(const LinearLayer& layer) {
    const int64_t b = block_.index;
    LayerReport lr;
    lr.name = block_prefix(shape(), b) + layer.name;
    lr.block = b;
    lr.site = site_name(layer.input);
    lr.shape = {layer.out_features, layer.in_features};
    poll_interrupt(fmt::format("block {}, before {}", b, layer.name));
    const std::string key = layer.name + ".weight";
    const at::Tensor dense = block_.get(key);
    if (leave_dense(layer, dense, lr.name)) {
      lr.skipped = true;
      lr.sparsity = fraction_of_zeros(dense);
      report_.layers.push_back(lr);
      return;
    }
    LayerStats layer_stats;
    layer_stats.layer = lr.name;
    if (calibrated()) {
      layer_stats.hessian = stats_.at(layer.input).hessian();
      if (layer_pruner_->selector_info().needs_norms())
        layer_stats.act_sq_norm = stats_.at(layer.input).column_sq_norms();
    }
    const SparsityPattern target = target_of(b);
    lr.target_sparsity = target.sparsity();
    const LayerResult result = layer_pruner_->prune(dense, layer_stats, target, lr);
    block_.tensors[key] = result.weight;
    output_->add_mask(lr.name, result.pruned);
    report_.seconds.select += lr.seconds_select;
    report_.seconds.reconstruct += lr.seconds_reconstruct;
    report_.layers.push_back(lr);
    progress_.update({"prune", b, shape().num_layers,
                      fmt::format("block {}/{} {} sparsity {:.3f} error {:.4f}", b + 1, shape().num_layers, layer.name,
                                  lr.sparsity, lr.error_final)});
  }

  // --skip, or (with --allow-non-finite) a layer that cannot be pruned meaningfully because its weight, or the
  // statistics its selector or OPTIMA needs, hold NaN or Inf: left as it is, so that the run still completes.
  bool leave_dense(const LinearLayer& layer, const at::Tensor& dense, const std::string& name) const {
    const bool finite_weight = all_finite(dense);
    if (!plan_.allow_non_finite && !finite_weight)
      throw Error(ErrorKind::kNumeric,
                  fmt::format("{}: weight '{}.weight' holds NaN or Inf values", checkpoint_->dir().string(), name));
    const bool needs_stats =
        layer_pruner_->selector_info().needs_calibration() || plan_.reconstruct == Reconstruct::kOptima;
    const bool left_dense = !finite_weight || (calibrated() && needs_stats && stats_.at(layer.input).saw_non_finite());
    if (left_dense)
      spdlog::warn("{}: left dense: its weight or input statistics hold NaN or Inf (--allow-non-finite)", name);
    return left_dense || std::regex_search(name, skip_);
  }

  // Between blocks memory goes back to about the activations alone: the block's weights and statistics, the
  // checkpoint's pages and free heap are released.
  void release_block(int64_t b) {
    block_ = BlockWeights{};
    stats_.clear();
    hessians_to_save_.clear();
    checkpoint_->drop_resident_pages();
    release_free_memory();
    const ResidentBytes resident = resident_bytes();
    spdlog::debug("block {} done (resident: {:.0f} MiB allocated, {:.0f} MiB mapped)", b,
                  static_cast<double>(resident.anonymous) / 1048576.0, static_cast<double>(resident.file) / 1048576.0);
  }

  // A job of many processes must stop at the same point, or the processes that go on wait for the others in the
  // next collective: they check for a signal only at the ends of blocks, together (stop_on_signal).
  void poll_interrupt(const std::string& where) const {
    if (!dist_.active()) check_interrupt(where);
  }

  void stop_on_signal(const std::string& where) const {
    if (!dist_.active()) return check_interrupt(where);
    // The largest signal number any process got (SIGTERM over SIGINT); all stop here when there is one.
    const int signal_number = static_cast<int>(
        dist_.all_reduce({static_cast<double>(interrupt_signal())}, ReduceOp::kMax, "checking for a signal")[0]);
    if (signal_number != 0)
      throw_interrupted(signal_number,
                        interrupt_signal() != 0 ? where : where + " (another process of the job was signalled)");
  }

  // On SIGTERM/SIGINT (between layers and batches; in a job of many processes only at the end of a block, where
  // they agree): the blocks before completed_ are written and the runner holds the inputs of block completed_
  // (propagation itself is never interrupted, so the two always agree). That is what the state records. Every
  // process of a job saves its share of the activations; rank 0 gathers their records and writes the rest and
  // state.json. Throws kSuspended.
  [[noreturn]] void save_state(const Error& stop) {
    const auto t0 = Clock::now();
    RunState next;
    next.fingerprint = fingerprint_;
    next.next_block = completed_;
    for (const LayerReport& l : report_.layers)
      if (l.block < completed_) next.layers.push_back(l);
    next.timings = report_.seconds;
    next.timings.total = report_.seconds_before_resume + seconds_since(start_);
    if (!allocation_.empty()) next.allocation = allocation_.to_json(plan_);
    output_->suspend(next);
    if (calibrated()) save_activations_share(next);
    if (dist_.is_root()) {
      work_->write_state(next);
      work_->keep(true);
    }
    // No process reports the state saved before state.json is there: a launcher may stop the whole job as soon
    // as the first process exits.
    dist_.barrier("saving the state");
    spdlog::info("saved the state of {} completed block(s) in {:.1f} s", completed_, seconds_since(t0));
    throw Error(ErrorKind::kSuspended,
                fmt::format("{}; saved {} and the activations entering block {} in {}: rerun the same command with "
                            "--resume to continue",
                            stop.what(), completed_ == 0 ? "no block yet" : fmt::format("blocks 0-{}", completed_ - 1),
                            completed_, work_->path().string()));
  }

  // The gather returns once every process has written and checksummed its file: state.json, written after it,
  // never names a file that is not complete.
  void save_activations_share(RunState& next) const {
    const std::string name = activation_file_name(completed_, dist_);
    work_->create();
    save_activations(runner_->activations(), work_->path() / name);
    const std::vector<std::string> records = dist_.all_gather_text(
        nlohmann::json{{"name", name}, {"record", work_->describe_file(name)}}.dump(), "saving the activations");
    for (const std::string& text : records) {
      const nlohmann::json r = nlohmann::json::parse(text);
      next.files[r.at("name").get<std::string>()] = r.at("record");
      next.activations.push_back(r.at("name").get<std::string>());
    }
  }

  void finish() {
    progress_.update({"prune", shape().num_layers, shape().num_layers, "writing"});
    progress_.finish();
    const auto t0 = Clock::now();
    output_->finish();
    report_.seconds.write += seconds_since(t0);
    report_.total_sparsity();
    report_.allocation = allocation_.empty() ? nlohmann::json{{"method", std::string(to_string(plan_.allocation))},
                                                              {"target", plan_.pattern.sparsity()}}
                                             : allocation_.to_json(plan_);
    report_.peak_rss_bytes = peak_rss_bytes();
    report_.seconds.communicate = dist_.seconds_in_collectives() - communicated_before_;
    report_.seconds.total = report_.seconds_before_resume + seconds_since(start_);
    output_->publish(report_);
    // Every process's spill file is gone before rank 0 removes the work folder.
    runner_.reset();
    // The other processes succeed only once rank 0 has written the output (or fail when it could not).
    dist_.barrier("the end of the run, after rank 0 wrote the output");
    if (dist_.is_root()) work_->keep(false);  // complete: the work folder goes
  }

  const PrunePlan& plan_;
  ProgressSink& progress_;
  const Distributed& dist_;
  const std::regex skip_;
  Clock::time_point start_;
  double communicated_before_ = 0;
  PruneReport report_;
  std::optional<Checkpoint> checkpoint_;
  std::optional<DecoderModel> model_;
  std::vector<LinearLayer> linears_;
  std::vector<Site> sites_;
  int64_t seqlen_ = 0;
  std::optional<LayerPruner> layer_pruner_;
  std::unique_ptr<OutputSink> output_;
  std::optional<ResumeFolder> work_;  // after output_: the staged output is checked before the folder is locked
  std::optional<RunState> state_;     // the saved state being resumed
  CalibrationSet calibration_;
  nlohmann::json fingerprint_;
  std::pair<int64_t, int64_t> windows_;  // this process's share of the calibration windows
  std::optional<BlockRunner> runner_;
  BlockAllocation allocation_;  // OWL's per-block sparsities; empty: every layer at the plan's target
  int64_t first_block_ = 0;
  int64_t completed_ = 0;  // blocks pruned and written
  BlockWeights block_;     // the block being pruned
  std::map<Site, InputStatistics> stats_;
  std::map<std::string, at::Tensor> hessians_to_save_;
};

}  // namespace

PruneReport prune_model(const PrunePlan& plan, ProgressSink& progress, const CalibrationSet* calibration,
                        const Distributed& dist) {
  return PruneRun(plan, progress, dist).run(calibration);
}

}  // namespace optima
