// Many processes without processes: the launcher variables and their errors, SLURM host lists, the shares, the
// collectives of a job of one, the text collectives of a job of two threads (Gloo over the loopback interface), and
// pooling the statistics of two shares into those of all the samples.
#include <ATen/ATen.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <thread>

#include "optima/dist/distributed.h"
#include "optima/stats/accumulator.h"
#include "test_util.h"

namespace optima::test {
namespace {

LaunchEnvironment launch(const std::map<std::string, std::string>& vars) {
  return read_launch_environment([&](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchEnvironment, NoneIsOneProcess) {
  const LaunchEnvironment env = launch({});
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.source, "");
  // An allocation of one task is one process too, and needs no host.
  EXPECT_EQ(launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}).world_size, 1);
}

TEST(LaunchEnvironment, TorchrunVariables) {
  const LaunchEnvironment env = launch({{"RANK", "3"},
                                        {"WORLD_SIZE", "4"},
                                        {"LOCAL_RANK", "1"},
                                        {"MASTER_ADDR", "node7"},
                                        {"MASTER_PORT", "29555"},
                                        {"SLURM_PROCID", "0"},  // torchrun's variables win inside an allocation
                                        {"SLURM_NTASKS", "1"}});
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "node7");
  EXPECT_EQ(env.master_port, 29555);
  EXPECT_EQ(env.source, "RANK/WORLD_SIZE");
}

TEST(LaunchEnvironment, SrunVariablesAndTheirDefaults) {
  LaunchEnvironment env = launch({{"SLURM_PROCID", "1"},
                                  {"SLURM_NTASKS", "2"},
                                  {"SLURM_LOCALID", "1"},
                                  {"SLURM_STEP_NODELIST", "gpu[003-005,007],cpu1"},
                                  {"SLURM_JOB_NODELIST", "other"},
                                  {"SLURM_JOB_ID", "123456"}});
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "gpu003");
  EXPECT_EQ(env.master_port, 29500 + 456);
  EXPECT_EQ(env.source, "SLURM_PROCID/SLURM_NTASKS");
  env = launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LAUNCH_NODE_IPADDR", "10.1.2.3"}});
  EXPECT_EQ(env.master_addr, "10.1.2.3");
  EXPECT_EQ(env.master_port, 29500);
  env = launch({{"SLURM_PROCID", "0"},
                {"SLURM_NTASKS", "2"},
                {"SLURM_JOB_NODELIST", "a1"},
                {"MASTER_ADDR", "b2"},
                {"MASTER_PORT", "4000"}});
  EXPECT_EQ(env.master_addr, "b2");
  EXPECT_EQ(env.master_port, 4000);
}

TEST(LaunchEnvironment, InconsistentVariablesNameThemselves) {
  expect_error([] { launch({{"WORLD_SIZE", "2"}}); }, ErrorKind::kUsage, {"RANK and WORLD_SIZE go together"});
  expect_error(
      [] {
        launch({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
      },
      ErrorKind::kUsage, {"RANK", "[0, 1]", "'2'"});
  expect_error([] { launch({{"RANK", "0"}, {"WORLD_SIZE", "two"}}); }, ErrorKind::kUsage, {"WORLD_SIZE", "'two'"});
  expect_error(
      [] {
        launch({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}});
      },
      ErrorKind::kUsage, {"MASTER_ADDR and MASTER_PORT", "MASTER_PORT=''"});
  expect_error(
      [] {
        launch({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}});
      },
      ErrorKind::kUsage, {"MASTER_PORT", "[1, 65535]"});
  expect_error(
      [] {
        launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "3"}});
      },
      ErrorKind::kUsage, {"SLURM_NTASKS=3", "no host for rank 0"});
}

TEST(SlurmHostList, FirstHost) {
  EXPECT_EQ(first_slurm_host(""), "");
  EXPECT_EQ(first_slurm_host("node1"), "node1");
  EXPECT_EQ(first_slurm_host("node1,node2"), "node1");
  EXPECT_EQ(first_slurm_host("gpu[003-005,007]"), "gpu003");
  EXPECT_EQ(first_slurm_host("rack[2,4]-n[1-3],x"), "rack2-n1");
  EXPECT_EQ(first_slurm_host("c[10-11]"), "c10");
}

TEST(Distributed, SharesCoverEveryItemOnce) {
  const Distributed& one = Distributed::single_process();
  EXPECT_EQ(one.share(7), (std::pair<int64_t, int64_t>{0, 7}));
  EXPECT_FALSE(one.active());
  EXPECT_TRUE(one.is_root());
  EXPECT_EQ(one.backend_name(), "none");
  // A job of one needs no backend: the same constructor as a real job.
  LaunchEnvironment env;
  const Distributed also_one(env, {});
  at::Tensor t = at::arange(6, at::kFloat).view({3, 2});
  std::vector<at::Tensor> tensors{t.clone()};
  also_one.all_reduce(tensors, ReduceOp::kSum, "test");
  EXPECT_TRUE(at::equal(tensors[0], t));
  EXPECT_EQ(also_one.all_reduce({1.5, -2.0}, ReduceOp::kMax, "test"), (std::vector<double>{1.5, -2.0}));
  EXPECT_TRUE(at::equal(also_one.all_gather_shares(t, 3, "test"), t));
  also_one.barrier("test");
  also_one.check_same("anything", "test");
  EXPECT_EQ(also_one.broadcast_text("state", 0, "test"), "state");
  EXPECT_EQ(also_one.all_gather_text("record", "test"), (std::vector<std::string>{"record"}));
}

// A TCP port of the loopback interface that nothing listens on now.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(address);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), size) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0)
    return 0;
  ::close(fd);
  return ntohs(address.sin_port);
}

// What a saved state needs from a job: rank 0's text on every process, and every process's record (of different
// lengths, one empty) on every process.
TEST(Distributed, TextCollectivesOfTwoProcesses) {
  if (!distributed_backend_available(c10::kCPU)) GTEST_SKIP() << "built without Gloo";
  const int port = free_port();
  ASSERT_NE(port, 0);
  std::vector<std::string> broadcast(2), errors(2);
  std::vector<std::vector<std::string>> gathered(2);
  auto process = [&](int rank) {
    try {
      LaunchEnvironment env;
      env.rank = rank;
      env.world_size = 2;
      env.master_addr = "127.0.0.1";
      env.master_port = port;
      DistributedOptions options;
      options.timeout = std::chrono::seconds(60);
      const Distributed dist(env, options);
      broadcast[static_cast<size_t>(rank)] = dist.broadcast_text(rank == 0 ? "{\"next_block\": 3}" : "x", 0, "test");
      gathered[static_cast<size_t>(rank)] = dist.all_gather_text(rank == 0 ? "" : "the record of rank 1", "test");
    } catch (const std::exception& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
  };
  std::thread rank1(process, 1);
  process(0);
  rank1.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
    EXPECT_EQ(broadcast[static_cast<size_t>(r)], "{\"next_block\": 3}") << "rank " << r;
    EXPECT_EQ(gathered[static_cast<size_t>(r)], (std::vector<std::string>{"", "the record of rank 1"})) << "rank " << r;
  }
}

TEST(Distributed, ABuildWithoutTheBackendSaysSo) {
  if (distributed_backend_available(c10::kCPU)) GTEST_SKIP() << "this build has Gloo";
  LaunchEnvironment env;
  env.world_size = 2;
  env.master_addr = "127.0.0.1";
  env.master_port = 29500;
  expect_error([&] { Distributed d(env, {}); }, ErrorKind::kUsage, {"rank 0 of 2", "without Gloo"});
}

// Two shares pooled give the statistics of all the samples (the reference's running means weighted by samples),
// checked against one accumulation and against the closed forms.
TEST(InputStatistics, PoolingSharesEqualsOneAccumulation) {
  at::manual_seed(3);
  const int64_t features = 24;
  std::vector<at::Tensor> batches;
  for (int64_t b : {2, 1, 3, 1, 2}) batches.push_back(at::randn({b, 5, features}));
  InputStatistics all(features, c10::kCPU, true, true, at::kDouble);
  InputStatistics first(features, c10::kCPU, true, true, at::kDouble);
  InputStatistics second(features, c10::kCPU, true, true, at::kDouble);
  for (size_t i = 0; i < batches.size(); ++i) {
    all.add(batches[i]);
    (i < 2 ? first : second).add(batches[i]);
  }
  // The all-reduce of two processes, played by hand: the second share's parts, then the first's plus them.
  std::vector<at::Tensor> second_parts;
  second.pool([&](std::vector<at::Tensor>& parts) {
    for (const at::Tensor& p : parts) second_parts.push_back(p.clone());
  });
  first.pool([&](std::vector<at::Tensor>& parts) {
    ASSERT_EQ(parts.size(), second_parts.size());
    for (size_t i = 0; i < parts.size(); ++i) parts[i] = parts[i] + second_parts[i];
  });
  EXPECT_EQ(first.samples(), all.samples());
  EXPECT_EQ(first.tokens(), all.tokens());
  EXPECT_FALSE(first.saw_non_finite());
  EXPECT_TRUE(at::allclose(first.hessian(), all.hessian(), 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(first.column_sq_norms(), all.column_sq_norms(), 1e-12, 1e-12));
  // Both are the closed forms over all N samples' tokens: H = (2/N) XᵀX and s_j = Σ x_j² / N.
  const at::Tensor x = at::cat(batches, 0).reshape({-1, features}).to(at::kDouble);
  const double n = static_cast<double>(all.samples());
  EXPECT_EQ(all.samples(), 9);
  EXPECT_TRUE(at::allclose(first.hessian(), x.t().mm(x) * (2.0 / n), 1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(first.column_sq_norms(), x.square().sum(0) / n, 1e-10, 1e-12));
  // A share without samples adds nothing.
  InputStatistics empty(features, c10::kCPU, true, false, at::kDouble);
  InputStatistics alone(features, c10::kCPU, true, false, at::kDouble);
  alone.add(batches[0]);
  const at::Tensor before = alone.hessian().clone();
  std::vector<at::Tensor> empty_parts;
  empty.pool([&](std::vector<at::Tensor>& parts) {
    for (const at::Tensor& p : parts) empty_parts.push_back(p.clone());
  });
  alone.pool([&](std::vector<at::Tensor>& parts) {
    for (size_t i = 0; i < parts.size(); ++i) parts[i] = parts[i] + empty_parts[i];
  });
  EXPECT_TRUE(at::allclose(alone.hessian(), before, 1e-14, 1e-14));
  EXPECT_EQ(alone.samples(), 2);
}

}  // namespace
}  // namespace optima::test
