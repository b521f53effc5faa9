// The block-by-block pruning pipeline (see pruner.h).
#include "optima/prune/pruner.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "optima/core/error.h"
#include "optima/core/interrupt.h"
#include "optima/core/resources.h"
#include "optima/io/checkpoint.h"
#include "optima/io/checkpoint_writer.h"
#include "optima/io/output_dir.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/model/decoder.h"
#include "optima/prune/activations.h"
#include "optima/prune/distributed_steps.h"
#include "optima/prune/resume.h"
#include "optima/select/selector.h"
#include "optima/solve/row_solver.h"
#include "optima/stats/accumulator.h"
#include "optima/text/calibration.h"
#include "optima/text/tokenizer.h"

namespace optima {
namespace fs = std::filesystem;

namespace {

using Clock = SteadyClock;

// ||(W - V) X||² / ||W X||² from H ∝ XᵀX: tr(D H Dᵀ) / tr(W H Wᵀ), in fp64.
double relative_error(const at::Tensor& dense, const at::Tensor& updated, const at::Tensor& hessian) {
  const at::Tensor h = hessian.to(at::kDouble);
  const at::Tensor w = dense.to(h.device(), at::kDouble);
  const at::Tensor d = w - updated.to(h.device(), at::kDouble);
  const double denominator = (w.mm(h) * w).sum().item<double>();
  const double numerator = (d.mm(h) * d).sum().item<double>();
  return denominator > 0 ? numerator / denominator : 0.0;
}

bool pattern_holds(const at::Tensor& zeros, const SparsityPattern& pattern) {
  if (pattern.is_unstructured()) return true;  // the achieved fraction is reported; the quirks allow +-ties
  const at::Tensor groups = zeros.reshape({zeros.size(0), -1, pattern.m()}).sum(-1);
  return (groups >= pattern.n()).all().item<bool>();
}

// Masks packed 8 columns per byte along the input dimension, least significant bit first; 1 = pruned.
at::Tensor pack_mask(const at::Tensor& pruned) {
  const int64_t in = pruned.size(1), padded = (in + 7) / 8 * 8;
  at::Tensor bits = at::zeros({pruned.size(0), padded}, pruned.options().dtype(at::kLong));
  bits.slice(1, 0, in).copy_(pruned.to(at::kLong));
  const at::Tensor weights = at::pow(2, at::arange(8, bits.options()));
  return (bits.view({pruned.size(0), padded / 8, 8}) * weights).sum(-1).to(at::kByte).cpu();
}

// Distinct input sites of a block in forward order.
std::vector<std::string> sites_in_order(const std::vector<LinearLayer>& layers) {
  std::vector<std::string> sites;
  for (const LinearLayer& l : layers)
    if (std::find(sites.begin(), sites.end(), to_string(l.input)) == sites.end()) sites.push_back(to_string(l.input));
  return sites;
}

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

std::string block_file_name(const char* what, int64_t block) {
  return fmt::format("{}-block-{:04d}.safetensors", what, block);
}

// Each process of a job of many saves its own share of the activations, under a name of its rank.
std::string activation_file_name(int64_t block, const Distributed& dist) {
  if (!dist.active()) return block_file_name("activations", block);
  return fmt::format("activations-block-{:04d}.rank-{}.safetensors", block, dist.rank());
}

LayerReport layer_report_from_json(const nlohmann::json& j) {
  LayerReport l;
  l.name = j.at("name");
  l.block = j.at("block");
  l.site = j.at("input");
  l.shape = j.at("shape").get<std::vector<int64_t>>();
  l.skipped = j.at("skipped");
  l.sparsity = j.at("sparsity");
  l.pattern_ok = j.at("pattern_ok");
  l.error_selector = j.at("error_selector");
  l.error_final = j.at("error_final");
  l.damping = j.at("damping");
  l.damping_retries = j.at("damping_retries");
  l.seconds_select = j.at("seconds_select");
  if (j.contains("kkt_residual")) {
    l.kkt_residual = j.at("kkt_residual");
    l.reconstruct_damping = j.at("reconstruct_damping");
    l.qp_iterations = j.at("qp_iterations");
    l.qp_fp64_fallback_rows = j.at("qp_fp64_fallback_rows");
    l.qp_chunks = j.at("qp_chunks");
    l.qp_converged = j.at("qp_converged");
    l.seconds_reconstruct = j.at("seconds_reconstruct");
  }
  return l;
}

}  // namespace

int64_t calibration_seqlen(const PrunePlan& plan, int64_t max_positions, const std::string& config_path) {
  if (plan.seqlen > max_positions)
    fail_usage(fmt::format("--seqlen {} exceeds the model's {} positions (max_position_embeddings in {})", plan.seqlen,
                           max_positions, config_path));
  return plan.seqlen > 0 ? plan.seqlen : std::min(kDefaultSeqlen, max_positions);
}

PruneReport prune_model(const PrunePlan& plan, ProgressSink& progress, const CalibrationSet* shared_calibration,
                        const Distributed& dist) {
  const auto start = Clock::now();
  const double communicated_before = dist.seconds_in_collectives();
  plan.validate();
  PruneReport report;
  report.settings = plan.to_json();
  dist.check_same(report.settings.dump(), "prune settings");
  // Part of the resume fingerprint too: a state saved by a job of W processes holds W shares of activations.
  report.settings["world_size"] = dist.world_size();

  // --- model, settings that need it, and outputs ------------------------------------------------------------
  const Checkpoint checkpoint = Checkpoint::open(plan.model);
  RunOptions run;
  run.device = parse_device(plan.device);
  if (!plan.dtype.empty()) run.dtype = parse_float_dtype(plan.dtype);
  run.allow_non_finite = plan.allow_non_finite;
  const DecoderModel model(checkpoint, run);
  const ModelShape& shape = model.shape();
  report.model_type = shape.model_type;
  report.num_layers = shape.num_layers;
  const std::vector<LinearLayer> linears = linear_layers(shape);
  const std::regex skip(plan.skip.empty() ? std::string("$^") : plan.skip);
  for (const LinearLayer& l : linears)
    if (plan.pattern.is_n_m()) plan.pattern.check_fits(l.in_features, block_prefix(shape, 0) + l.name);
  const int64_t seqlen = calibration_seqlen(plan, shape.max_positions, checkpoint.config().path().string());
  if (plan.seqlen == 0 && seqlen < kDefaultSeqlen)
    spdlog::info("calibration windows of {} tokens: the model's max_position_embeddings (default {})", seqlen,
                 kDefaultSeqlen);
  report.settings["seqlen"] = seqlen;

  SelectorOptions selector_options;
  selector_options.pattern = plan.pattern;
  selector_options.percdamp = plan.percdamp;
  selector_options.blocksize = plan.blocksize;
  const auto selector = make_selector(plan.method, selector_options);
  const bool need_hessian = true;  // errors in the report and reconstruction need H whatever the selector
  const bool need_norms = selector->needs_act_norms();
  if (plan.reconstruct == "optima" && plan.calib.empty())
    fail_usage("--reconstruct optima needs calibration data (--calib FILE): it solves against the Hessian");
  RowSolveOptions solve_options;
  solve_options.damp = plan.qp_damp;
  solve_options.precision = plan.qp_precision == "fp32" ? SolvePrecision::kFloat32Refined : SolvePrecision::kFloat64;
  solve_options.memory_budget_bytes = static_cast<int64_t>(parse_byte_size(plan.qp_memory));

  const at::ScalarType hessian_dtype = plan.hessian_dtype == "fp64" ? at::kDouble : at::kFloat;

  // In a job of many processes rank 0 writes the output; the others write nothing there, not even the directories.
  std::optional<StagedDirectory> staged;
  if (dist.is_root()) staged.emplace(plan.out, plan.overwrite, plan.model);
  std::optional<StagedDirectory> hessian_dir;
  if (dist.is_root() && !plan.save_hessians.empty())
    hessian_dir.emplace(plan.save_hessians, plan.overwrite, plan.model);
  // The run's work folder: staging files of the checkpoint, and what an interruption saves (see resume.h). In a
  // job of many processes rank 0 owns it (the lock, the writer's files, state.json) and every process keeps its
  // own share of the activations there, so it must be on a file system they all share, as the output is.
  std::optional<ResumeFolder> work;
  std::optional<nlohmann::json> state;
  if (dist.is_root()) {
    work.emplace(plan.out);
    if (work->has_state()) {
      work->keep(true);  // a saved state is never removed by a run that does not complete it
      if (!plan.resume)
        fail_usage(
            fmt::format("{} holds the saved state of an interrupted run writing {}; pass --resume to continue "
                        "it, or delete that folder to start over",
                        work->path().string(), plan.out.string()));
      state = work->read_state();
    } else {
      work->clear();  // leftovers of a run killed before it could save anything
      if (plan.resume)
        spdlog::info("--resume: no saved state in {}; starting from the first block", work->path().string());
    }
  } else {
    work.emplace(plan.out, ResumeFolder::Shared{});
  }
  // Every process continues the state rank 0 found (and touches the folder only once rank 0 has cleared it).
  if (dist.active()) {
    const std::string text = dist.broadcast_text(state ? state->dump() : std::string(), 0, "the saved state");
    if (!dist.is_root() && !text.empty()) state = nlohmann::json::parse(text);
  }

  // --- calibration -----------------------------------------------------------------------------------------
  auto phase = Clock::now();
  CalibrationSet calibration;
  if (shared_calibration) {
    OPTIMA_ASSERT(shared_calibration->seqlen == seqlen && shared_calibration->nsamples == plan.nsamples);
    calibration = *shared_calibration;
  } else if (!plan.calib.empty()) {
    const fs::path tokenizer_dir = plan.tokenizer.empty() ? plan.model : plan.tokenizer;
    const auto tokenizer = load_tokenizer(tokenizer_dir);
    check_tokenizer_fits(*tokenizer, tokenizer_dir, shape.vocab_size, checkpoint.config().path());
    calibration = load_calibration(plan.calib, *tokenizer, {plan.nsamples, seqlen, plan.seed});
  } else {
    calibration.rule = "none";
    calibration.description = "no calibration data (magnitude pruning needs none; errors are not measured)";
  }
  report.calibration = calibration.description;
  spdlog::info("calibration: {}", calibration.description);
  report.seconds_calibration = seconds_since(phase);
  const nlohmann::json fingerprint = run_fingerprint(resume_settings(plan, report.settings), checkpoint, calibration);
  if (state) check_fingerprint(state->at("fingerprint"), fingerprint, work->path() / "state.json");

  // Hidden states of every calibration window, kept on the CPU between blocks (batches of plan.batch_size), in
  // memory or, past the budget, in a file of the work folder. A job of many processes gives each its share of the
  // windows (which may be none), and each its own file.
  const auto [first_window, end_window] = dist.share(calibration.nsamples);
  std::vector<std::vector<int64_t>> batch_shapes;
  for (int64_t b = first_window; b < end_window && !calibration.ids.empty(); b += plan.batch_size)
    batch_shapes.push_back({std::min(plan.batch_size, end_window - b), seqlen, shape.hidden_size});
  const std::string spill_name =
      dist.active() ? fmt::format("activations.rank-{}.spill", dist.rank()) : std::string("activations.spill");
  auto hidden_store = std::make_unique<ActivationStore>(
      batch_shapes, model.dtype(), activation_budget_bytes(plan.activation_memory), work->path() / spill_name);
  ActivationStore& hidden = *hidden_store;
  const std::vector<double> held = dist.all_reduce({static_cast<double>(hidden.bytes()), hidden.on_disk() ? 1.0 : 0.0},
                                                   ReduceOp::kSum, "the size of the activations");
  report.activation_bytes = static_cast<int64_t>(held[0]);  // of all processes
  report.activations_on_disk = held[1] > 0;
  const bool calibrated = !calibration.ids.empty();

  CheckpointWriterOptions writer_options;
  writer_options.max_shard_bytes = parse_byte_size(plan.max_shard_size);
  std::unique_ptr<CheckpointWriter> writer;
  std::map<std::string, at::Tensor> masks;
  nlohmann::json saved_files = nlohmann::json::object();  // per-block files of the work folder, for state.json
  int64_t first_block = 0;
  if (state) {
    // Everything the saved state names is checked before any of it is used: in a job of many processes each one
    // checks its own share of the activations and rank 0 the rest, and all go on only when every check passed (a
    // process that refuses its share stops, and the others with it, before rank 0 touches the writer's files).
    std::string my_activations;
    std::set<std::string> others_activations;
    if (calibrated) {
      const nlohmann::json& names = state->at("activations");
      if (!dist.active()) {
        my_activations = names.get<std::string>();
      } else {
        OPTIMA_ASSERT(names.is_array() && names.size() == static_cast<size_t>(dist.world_size()));
        for (int r = 0; r < dist.world_size(); ++r) {
          const std::string name = names[static_cast<size_t>(r)].get<std::string>();
          if (r == dist.rank())
            my_activations = name;
          else
            others_activations.insert(name);
        }
      }
    }
    for (const auto& [name, record] : state->at("files").items())
      if (dist.is_root() ? others_activations.count(name) == 0 : name == my_activations)
        work->verify_file(name, record);
    dist.barrier("checking the saved state");
    first_block = state->at("next_block").get<int64_t>();
    if (staged) writer = CheckpointWriter::resume(staged->staging(), writer_options, work->path(), state->at("writer"));
    if (calibrated) load_activations(hidden, work->path() / my_activations);
    if (state->contains("masks") && staged) {
      const auto file = SafetensorsFile::open(work->path() / state->at("masks").get<std::string>());
      for (const TensorInfo& info : file->tensors())
        masks.emplace(info.name, tensor_from_bytes(info, file->data(info), file->mapping()).clone());
    }
    for (const nlohmann::json& l : state->at("report").at("layers")) report.layers.push_back(layer_report_from_json(l));
    const nlohmann::json& t = state->at("report").at("timings");
    report.seconds_forward = t.at("forward");
    report.seconds_select = t.at("select");
    report.seconds_reconstruct = t.at("reconstruct");
    report.seconds_write = t.at("write");
    report.seconds_before_resume = t.at("total");
    report.resumed_from_block = first_block;
    for (const auto& [name, record] : state->at("files").items())
      if (name.rfind("hessians-", 0) == 0) saved_files[name] = record;
    spdlog::info("resuming from {}: blocks 0-{} were pruned by an earlier run; continuing at block {}",
                 work->path().string(), first_block - 1, first_block);
  } else {
    const auto t0 = Clock::now();
    if (calibrated) {
      const at::Tensor ids = at::tensor(calibration.ids, at::kLong).view({calibration.nsamples, calibration.seqlen});
      for (size_t i = 0; i < hidden.size(); ++i) {
        const int64_t begin = first_window + static_cast<int64_t>(i) * plan.batch_size;
        hidden.set(i, model.embed(ids.slice(0, begin, std::min(begin + plan.batch_size, end_window))));
        hidden.release(i);
      }
    }
    report.seconds_forward += seconds_since(t0);
    if (staged) {
      writer = std::make_unique<CheckpointWriter>(staged->staging(), writer_options, work->path());
      for (const ExpectedTensor& t : global_tensors(shape)) writer->add(t.name, checkpoint.load(t.name));
      // A stored lm_head that the config ties to the embeddings is carried over unchanged too.
      if (shape.tie_word_embeddings && checkpoint.find("lm_head.weight"))
        writer->add("lm_head.weight", checkpoint.load("lm_head.weight"));
    }
  }
  if (staged) copy_model_side_files(plan.model, staged->staging());
  checkpoint.drop_resident_pages();

  // On SIGTERM/SIGINT (check_interrupt, between layers and batches; in a job of many processes only at the end of
  // a block, where they agree): the blocks before `completed` are written and `hidden` holds the inputs of block
  // `completed` (propagation itself is never interrupted, so the two always agree). That is what the state
  // records. Every process of a job saves its share of the activations; rank 0 gathers their records and writes
  // the rest and state.json.
  int64_t completed = first_block;
  auto save_state = [&](const Error& stop) {
    const auto t0 = Clock::now();
    nlohmann::json files = saved_files;
    nlohmann::json next = {{"format", "optima-resume"},
                           {"version", kResumeFormatVersion},
                           {"fingerprint", fingerprint},
                           {"next_block", completed}};
    if (writer) next["writer"] = writer->suspend();
    if (calibrated) {
      const std::string name = activation_file_name(completed, dist);
      work->create();
      save_activations(hidden, work->path() / name);
      // The gather returns once every process has written and checksummed its file: state.json, written after
      // it, never names a file that is not complete.
      const std::vector<std::string> records = dist.all_gather_text(
          nlohmann::json{{"name", name}, {"record", work->describe_file(name)}}.dump(), "saving the activations");
      nlohmann::json names = nlohmann::json::array();
      for (const std::string& text : records) {
        const nlohmann::json r = nlohmann::json::parse(text);
        files[r.at("name").get<std::string>()] = r.at("record");
        names.push_back(r.at("name"));
      }
      next["activations"] = dist.active() ? names : names[0];
    }
    if (plan.save_masks && staged) {
      std::vector<TensorBytes> bytes;
      for (const auto& entry : masks) {
        const std::string& mask_name = entry.first;  // not a structured binding: clang 14 cannot capture one
        if (std::any_of(report.layers.begin(), report.layers.end(),
                        [&](const LayerReport& l) { return l.block < completed && l.name + ".mask" == mask_name; }))
          bytes.push_back(tensor_bytes(mask_name, entry.second));
      }
      const std::string name = block_file_name("masks", completed);
      write_safetensors(work->path() / name, bytes, {{"format", "optima-masks"}});
      files[name] = work->describe_file(name);
      next["masks"] = name;
    }
    const nlohmann::json so_far = report.to_json();
    nlohmann::json layers = nlohmann::json::array();
    for (const nlohmann::json& l : so_far["layers"])
      if (l["block"].get<int64_t>() < completed) layers.push_back(l);
    next["report"] = {{"layers", layers},
                      {"timings",
                       {{"total", report.seconds_before_resume + seconds_since(start)},
                        {"forward", report.seconds_forward},
                        {"select", report.seconds_select},
                        {"reconstruct", report.seconds_reconstruct},
                        {"write", report.seconds_write}}}};
    next["files"] = files;
    if (dist.is_root()) {
      work->write_state(next);
      work->keep(true);
    }
    // No process reports the state saved before state.json is there: a launcher may stop the whole job as soon
    // as the first process exits.
    dist.barrier("saving the state");
    spdlog::info("saved the state of {} completed block(s) in {:.1f} s", completed, seconds_since(t0));
    throw Error(ErrorKind::kSuspended,
                fmt::format("{}; saved {} and the activations entering block {} in {}: rerun the same command with "
                            "--resume to continue",
                            stop.what(), completed == 0 ? "no block yet" : fmt::format("blocks 0-{}", completed - 1),
                            completed, work->path().string()));
  };
  // A job of many processes must stop at the same point, or the processes that go on wait for the others in the
  // next collective: they check for a signal only at the ends of blocks, together (below).
  auto poll_interrupt = [&](const std::string& where) {
    if (!dist.active()) check_interrupt(where);
  };

  const std::vector<std::string> sites = sites_in_order(linears);
  try {
    for (int64_t b = first_block; b < shape.num_layers; ++b) {
      const std::string prefix = block_prefix(shape, b);
      BlockWeights block = model.load_block(b);
      std::map<std::string, InputStatistics> stats;
      std::map<std::string, at::Tensor> hessians_to_save;

      // Runs every calibration batch through the block as it is now, accumulating statistics of `wanted` sites.
      auto collect = [&](const std::set<std::string>& wanted) {
        const auto t0 = Clock::now();
        for (const std::string& site : wanted) {
          const LinearLayer& first = *std::find_if(linears.begin(), linears.end(),
                                                   [&](const LinearLayer& l) { return to_string(l.input) == site; });
          stats.erase(site);
          stats.emplace(site, InputStatistics(first.in_features, run.device, need_hessian, need_norms, hessian_dtype));
        }
        for (size_t i = 0; i < hidden.size(); ++i) {
          poll_interrupt(fmt::format("block {} (statistics)", b));
          model.block_forward(block, hidden.get(i), [&](InputSite site, const at::Tensor& x) {
            if (wanted.count(to_string(site))) stats.at(to_string(site)).add(x);
          });
          hidden.release(i);
        }
        for (const std::string& site : wanted)
          pool_statistics(dist, stats.at(site), fmt::format("block {}, statistics of {}", b, site));
        report.seconds_forward += seconds_since(t0);
        for (const std::string& site : sites)  // in forward order: the first site that went wrong is named
          if (wanted.count(site) && stats.at(site).saw_non_finite() && !plan.allow_non_finite)
            throw Error(ErrorKind::kNumeric, fmt::format("block {}: the input of '{}' holds NaN or Inf values, or "
                                                         "values so large that its statistics overflow (stop here, or "
                                                         "pass --allow-non-finite to leave such layers dense)",
                                                         b, site));
      };

      auto prune_site = [&](const std::string& site) {
        for (const LinearLayer& layer : linears) {
          if (to_string(layer.input) != site) continue;
          const std::string name = prefix + layer.name;
          poll_interrupt(fmt::format("block {}, before {}", b, layer.name));
          LayerReport lr;
          lr.name = name;
          lr.block = b;
          lr.site = site;
          lr.shape = {layer.out_features, layer.in_features};
          const std::string key = layer.name + ".weight";
          const at::Tensor dense = block.get(key);
          const bool finite_weight = at::isfinite(dense).all().item<bool>();
          if (!plan.allow_non_finite && !finite_weight)
            throw Error(ErrorKind::kNumeric,
                        fmt::format("{}: weight '{}.weight' holds NaN or Inf values", checkpoint.dir().string(), name));
          // --allow-non-finite: a layer that cannot be pruned meaningfully (its weight, or the statistics its selector
          // or OPTIMA needs, hold NaN or Inf) is left as it is, so that the run still completes.
          const bool needs_stats = selector->needs_hessian() || need_norms || plan.reconstruct == "optima";
          const bool left_dense = !finite_weight || (calibrated && needs_stats && stats.at(site).saw_non_finite());
          if (left_dense)
            spdlog::warn("{}: left dense: its weight or input statistics hold NaN or Inf (--allow-non-finite)", name);
          if (left_dense || std::regex_search(name, skip)) {
            lr.skipped = true;
            lr.sparsity = 1.0 - static_cast<double>(at::count_nonzero(dense).item<int64_t>()) /
                                    static_cast<double>(dense.numel());
            report.layers.push_back(lr);
            continue;
          }
          LayerStats layer_stats;
          if (calibrated) {
            layer_stats.hessian = stats.at(site).hessian();
            if (need_norms) layer_stats.act_sq_norm = stats.at(site).column_sq_norms();
          }
          auto t0 = Clock::now();
          // Errors of the selector and the solver name the layer they were working on.
          const auto in_layer = [&](const auto& step) {
            try {
              return step();
            } catch (const Error& e) {
              throw Error(e.kind(), fmt::format("{}: {}", name, e.what()));
            }
          };
          const Selection selection = in_layer([&] { return selector->select(dense, layer_stats); });
          lr.seconds_select = seconds_since(t0);
          lr.damping = selection.damping;
          lr.damping_retries = selection.damping_retries;
          at::Tensor final_weight = selection.weight;
          if (calibrated) lr.error_selector = relative_error(dense, selection.weight, layer_stats.hessian);
          if (plan.reconstruct == "optima") {
            t0 = Clock::now();
            // OPTIMA starts from the dense row w, not the selector's updated weights (algorithms.md §6).
            const at::Tensor w = dense.to(at::kFloat);
            // A job of many processes solves each process's share of the rows and gathers them.
            const RowSolver solve = [&](const at::Tensor& w_rows, const at::Tensor& pruned_rows,
                                        const at::Tensor& start_rows, const RowSolveOptions& options) {
              return plan.qp_solver == "cg" ? solve_rows_cg(w_rows, pruned_rows, layer_stats.hessian, start_rows,
                                                            plan.qp_tol, plan.qp_max_iter, options)
                                            : solve_rows_exact(w_rows, pruned_rows, layer_stats.hessian, options);
            };
            const RowSolveResult r = in_layer([&] {
              return solve_rows_shared(dist, solve, w, selection.pruned, selection.weight.to(at::kFloat), solve_options,
                                       name);
            });
            lr.qp_iterations = r.iterations;
            lr.qp_fp64_fallback_rows = r.fp64_fallback_rows;
            lr.qp_chunks = r.chunks;
            lr.qp_converged = r.converged;
            if (!r.converged)
              spdlog::warn(
                  "{}: conjugate gradients stopped after {} iterations at relative KKT residual {:.2e} "
                  "(--qp-tol {:.1e}; raise --qp-max-iter, or use --qp-solver exact)",
                  name, r.iterations, r.kkt_residual, plan.qp_tol);
            lr.seconds_reconstruct = seconds_since(t0);
            final_weight = r.weight;
            lr.kkt_residual = r.kkt_residual;
            lr.reconstruct_damping = r.damping;
          }
          lr.error_final = calibrated ? relative_error(dense, final_weight, layer_stats.hessian) : 0.0;
          const at::Tensor written = final_weight.masked_fill(selection.pruned, 0).to(dense.scalar_type());
          const at::Tensor zeros = written == 0;
          lr.sparsity = zeros.to(at::kDouble).mean().item<double>();
          lr.pattern_ok = pattern_holds(zeros, plan.pattern);
          block.tensors[key] = written;
          if (plan.save_masks && staged) masks.emplace(name + ".mask", pack_mask(selection.pruned));
          report.seconds_select += lr.seconds_select;
          report.seconds_reconstruct += lr.seconds_reconstruct;
          report.layers.push_back(lr);
          progress.update({"prune", b, shape.num_layers,
                           fmt::format("block {}/{} {} sparsity {:.3f} error {:.4f}", b + 1, shape.num_layers,
                                       layer.name, lr.sparsity, lr.error_final)});
        }
        if (hessian_dir && calibrated)
          hessians_to_save.emplace(prefix + site, stats.at(site).hessian().cpu().contiguous());
      };

      progress.update({"prune", b, shape.num_layers, fmt::format("block {}/{} statistics", b + 1, shape.num_layers)});
      if (!calibrated) {
        for (const std::string& site : sites) prune_site(site);
      } else if (plan.propagation == Propagation::kReference) {
        collect({sites.begin(), sites.end()});
        for (const std::string& site : sites) prune_site(site);
      } else {
        for (const std::string& site : sites) {
          collect({site});
          prune_site(site);
        }
      }

      // The pruned block produces the next block's inputs. Not interruptible: a state must never hold some
      // batches before this block and some after it.
      const auto t0 = Clock::now();
      for (size_t i = 0; i < hidden.size(); ++i) {
        const at::Tensor h = model.block_forward(block, hidden.get(i));
        if (!plan.allow_non_finite && !at::isfinite(h).all().item<bool>())
          throw Error(ErrorKind::kNumeric,
                      fmt::format("block {}: the pruned block produced NaN or Inf activations; stopping", b));
        hidden.set(i, h);
        hidden.release(i);
      }
      report.seconds_forward += seconds_since(t0);

      // Write the block: pruned linear weights in the stored dtype, everything else byte-identical.
      const auto tw = Clock::now();
      for (const ExpectedTensor& t : block_tensors(shape, b)) {
        if (!writer) break;  // not rank 0: nothing is written
        const std::string relative = t.name.substr(prefix.size());
        const bool pruned_linear = std::any_of(linears.begin(), linears.end(),
                                               [&](const LinearLayer& l) { return l.name + ".weight" == relative; });
        const CheckpointTensor* stored = checkpoint.find(t.name);
        writer->add(t.name, pruned_linear ? block.get(relative).to(at::kCPU, to_scalar_type(stored->dtype))
                                          : checkpoint.load(t.name));
      }
      if (hessian_dir && !hessians_to_save.empty()) {
        // Kept in the work folder until the run completes, so that a resumed run still has them.
        std::vector<TensorBytes> bytes;
        bytes.reserve(hessians_to_save.size());
        for (const auto& [name, h] : hessians_to_save) bytes.push_back(tensor_bytes(name, h));
        const std::string name = block_file_name("hessians", b);
        write_safetensors(work->path() / name, bytes,
                          {{"format", "pt"}, {"scaling", "H = (2/n) sum over samples of X^T X, n = samples"}});
        saved_files[name] = work->describe_file(name);
      }
      report.seconds_write += seconds_since(tw);
      completed = b + 1;
      block = BlockWeights{};
      stats.clear();
      checkpoint.drop_resident_pages();
      release_free_memory();
      const ResidentBytes resident = resident_bytes();
      spdlog::debug("block {} done (resident: {:.0f} MiB allocated, {:.0f} MiB mapped)", b,
                    static_cast<double>(resident.anonymous) / 1048576.0,
                    static_cast<double>(resident.file) / 1048576.0);
      if (completed < shape.num_layers) {
        const std::string where = fmt::format("the end of block {}", b);
        if (!dist.active()) {
          check_interrupt(where);
        } else {
          // The largest signal number any process got (SIGTERM over SIGINT); all stop here when there is one.
          const int signal_number = static_cast<int>(
              dist.all_reduce({static_cast<double>(interrupt_signal())}, ReduceOp::kMax, "checking for a signal")[0]);
          if (signal_number != 0)
            throw_interrupted(signal_number,
                              interrupt_signal() != 0 ? where : where + " (another process of the job was signalled)");
        }
      }
    }
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kInterrupted) save_state(e);
    if (state && writer) {
      // A failed resumed run leaves the saved state as it found it, to be resumed again once the cause is fixed.
      try {
        (void)writer->suspend();
      } catch (const Error&) {
      }
    }
    throw;
  }
  progress.update({"prune", shape.num_layers, shape.num_layers, "writing"});
  progress.finish();

  const auto tw = Clock::now();
  if (writer) writer->finish();
  if (hessian_dir)
    for (const auto& [name, record] : saved_files.items()) {
      std::error_code ec;
      fs::rename(work->path() / name, hessian_dir->staging() / name, ec);
      if (ec) throw Error(ErrorKind::kIo, describe((hessian_dir->staging() / name).string(), ec.message()));
    }
  if (staged && plan.save_masks && !masks.empty()) {
    std::vector<TensorBytes> bytes;
    bytes.reserve(masks.size());
    for (const auto& [name, m] : masks) bytes.push_back(tensor_bytes(name, m));
    write_safetensors(staged->staging() / "masks.safetensors", bytes,
                      {{"format", "optima-masks"},
                       {"packing", "uint8 [out, ceil(in/8)]: bit i of byte k is input column 8k+i; 1 = pruned"}});
  }
  report.seconds_write += seconds_since(tw);

  int64_t zeros = 0, total = 0;
  for (const LayerReport& l : report.layers) {
    const int64_t n = l.shape[0] * l.shape[1];
    total += n;
    zeros += std::llround(l.sparsity * static_cast<double>(n));
  }
  report.overall_sparsity = total ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0;
  report.peak_rss_bytes = peak_rss_bytes();
  report.seconds_communicate = dist.seconds_in_collectives() - communicated_before;
  report.seconds_total = report.seconds_before_resume + seconds_since(start);
  if (staged) {
    write_text_file(staged->staging() / "prune_report.json", report.to_json().dump(2) + "\n");
    staged->commit();
  }
  if (hessian_dir) hessian_dir->commit();
  // Every process's spill file is gone before rank 0 removes the work folder.
  hidden_store.reset();
  // The other processes succeed only once rank 0 has written the output (or fail when it could not).
  dist.barrier("the end of the run, after rank 0 wrote the output");
  if (dist.is_root()) work->keep(false);  // complete: the work folder goes
  return report;
}

nlohmann::json PruneReport::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerReport& l : layers) {
    nlohmann::json j = {{"name", l.name},
                        {"block", l.block},
                        {"input", l.site},
                        {"shape", l.shape},
                        {"skipped", l.skipped},
                        {"sparsity", l.sparsity},
                        {"pattern_ok", l.pattern_ok},
                        {"error_selector", l.error_selector},
                        {"error_final", l.error_final},
                        {"damping", l.damping},
                        {"damping_retries", l.damping_retries},
                        {"seconds_select", l.seconds_select}};
    if (l.kkt_residual >= 0) {
      j["kkt_residual"] = l.kkt_residual;
      j["reconstruct_damping"] = l.reconstruct_damping;
      j["qp_iterations"] = l.qp_iterations;
      j["qp_fp64_fallback_rows"] = l.qp_fp64_fallback_rows;
      j["qp_chunks"] = l.qp_chunks;
      j["qp_converged"] = l.qp_converged;
      j["seconds_reconstruct"] = l.seconds_reconstruct;
    }
    layers_json.push_back(j);
  }
  return {
      {"settings", settings},
      {"calibration", calibration},
      {"model_type", model_type},
      {"num_layers", num_layers},
      {"overall_sparsity", overall_sparsity},
      {"timings",
       {{"total", seconds_total},
        {"calibration", seconds_calibration},
        {"forward", seconds_forward},
        {"select", seconds_select},
        {"reconstruct", seconds_reconstruct},
        {"write", seconds_write},
        {"communicate", seconds_communicate}}},
      {"peak_rss_bytes", peak_rss_bytes},
      {"activations", {{"bytes", activation_bytes}, {"on_disk", activations_on_disk}}},
      {"resumed_from_block", resumed_from_block >= 0 ? nlohmann::json(resumed_from_block) : nlohmann::json(nullptr)},
      {"layers", layers_json}};
}

std::string PruneReport::summary() const {
  size_t width = 5;
  for (const LayerReport& l : layers) width = std::max(width, l.name.size());
  const bool reconstructed = !layers.empty() && layers.front().kkt_residual >= 0;
  std::string out = fmt::format("{:<{}}  {:>11}  {:>8}  {:>7}  {:>11}", "layer", width, "shape", "sparsity", "pattern",
                                "err(select)");
  if (reconstructed) out += fmt::format("  {:>10}  {:>8}", "err(final)", "kkt");
  out += "\n";
  for (const LayerReport& l : layers) {
    out += fmt::format("{:<{}}  {:>11}  {:>8.4f}  {:>7}  {:>11.5f}", l.name, width,
                       fmt::format("{}x{}", l.shape[0], l.shape[1]), l.sparsity,
                       l.skipped ? "skipped" : (l.pattern_ok ? "ok" : "BROKEN"), l.error_selector);
    if (reconstructed) out += fmt::format("  {:>10.5f}  {:>8.1e}", l.error_final, l.kkt_residual);
    out += "\n";
  }
  out += fmt::format("overall sparsity {:.4f} over {} linear layers; {:.1f} s (forward {:.1f}, select {:.1f}",
                     overall_sparsity, layers.size(), seconds_total, seconds_forward, seconds_select);
  if (reconstructed) out += fmt::format(", reconstruct {:.1f}", seconds_reconstruct);
  out += fmt::format(", write {:.1f}); peak memory {:.0f} MiB\n", seconds_write,
                     static_cast<double>(peak_rss_bytes) / 1048576.0);
  return out;
}

}  // namespace optima
