// Rank, world size and local rank from the launcher's environment, and the
// communicator timeout from SRGPT_COMM_TIMEOUT_S.
#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "catch.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

namespace {

using namespace srgpt;

constexpr const char* kVariables[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                                      "PMI_RANK",             "PMI_SIZE",             "MPI_LOCALRANKID",
                                      "SLURM_PROCID",         "SLURM_NTASKS",         "SLURM_LOCALID",
                                      "SRGPT_COMM_TIMEOUT_S"};

// Clears every launcher variable for the test and restores them after.
class CleanEnvironment {
 public:
  CleanEnvironment() {
    for (const char* name : kVariables) {
      if (const char* value = std::getenv(name)) saved_[name] = value;
      ::unsetenv(name);
    }
  }
  ~CleanEnvironment() {
    for (const char* name : kVariables) ::unsetenv(name);
    for (const auto& [name, value] : saved_) ::setenv(name.c_str(), value.c_str(), 1);
  }
  CleanEnvironment(const CleanEnvironment&) = delete;
  CleanEnvironment& operator=(const CleanEnvironment&) = delete;
  void set(const char* name, const char* value) { ::setenv(name, value, 1); }

 private:
  std::map<std::string, std::string> saved_;
};

// The message of the Error that launch_info_from_environment throws, or
// nothing when it succeeds.
std::optional<std::string> launch_error() {
  try {
    launch_info_from_environment();
  } catch (const Error& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

bool mentions(const std::optional<std::string>& message, const std::string& part) {
  return message && message->find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("launch info is one process without launcher variables", "[comm]") {
  CleanEnvironment env;
  const LaunchInfo info = launch_info_from_environment();
  CHECK(info.rank == 0);
  CHECK(info.size == 1);
  CHECK(info.local_rank == 0);
  CHECK(info.launcher == "none");
  CHECK_FALSE(launched_under_mpi());
}

TEST_CASE("launch info reads Open MPI, MPICH/PMI and Slurm variables", "[comm]") {
  CleanEnvironment env;
  SECTION("Open MPI") {
    env.set("OMPI_COMM_WORLD_RANK", "5");
    env.set("OMPI_COMM_WORLD_SIZE", "8");
    env.set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
    // mpirun inside a Slurm allocation: Open MPI's variables win.
    env.set("SLURM_PROCID", "0");
    env.set("SLURM_NTASKS", "1");
    const LaunchInfo info = launch_info_from_environment();
    CHECK(info.rank == 5);
    CHECK(info.size == 8);
    CHECK(info.local_rank == 1);
    CHECK(info.launcher == "Open MPI");
  }
  SECTION("MPICH/PMI") {
    env.set("PMI_RANK", "2");
    env.set("PMI_SIZE", "3");
    env.set("MPI_LOCALRANKID", "2");
    const LaunchInfo info = launch_info_from_environment();
    CHECK(info.rank == 2);
    CHECK(info.size == 3);
    CHECK(info.local_rank == 2);
    CHECK(info.launcher == "MPICH/PMI");
  }
  SECTION("PMI under srun takes the local rank from Slurm") {
    env.set("PMI_RANK", "6");
    env.set("PMI_SIZE", "16");
    env.set("SLURM_LOCALID", "3");
    const LaunchInfo info = launch_info_from_environment();
    CHECK(info.rank == 6);
    CHECK(info.local_rank == 3);
  }
  SECTION("Slurm") {
    env.set("SLURM_PROCID", "11");
    env.set("SLURM_NTASKS", "12");
    env.set("SLURM_LOCALID", "3");
    const LaunchInfo info = launch_info_from_environment();
    CHECK(info.rank == 11);
    CHECK(info.size == 12);
    CHECK(info.local_rank == 3);
    CHECK(info.launcher == "Slurm");
  }
  SECTION("one rank needs no local rank") {
    env.set("OMPI_COMM_WORLD_RANK", "0");
    env.set("OMPI_COMM_WORLD_SIZE", "1");
    const LaunchInfo info = launch_info_from_environment();
    CHECK(info.size == 1);
    CHECK(info.local_rank == 0);
  }
  CHECK(launched_under_mpi());
}

TEST_CASE("launch info rejects values that are not integers", "[comm]") {
  for (const char* bad : {"", "x", "2x", "-1", " 3", "1.0", "99999999999999999999"}) {
    CleanEnvironment env;
    env.set("OMPI_COMM_WORLD_RANK", bad);
    env.set("OMPI_COMM_WORLD_SIZE", "4");
    env.set("OMPI_COMM_WORLD_LOCAL_RANK", "0");
    const std::optional<std::string> error = launch_error();
    INFO("OMPI_COMM_WORLD_RANK='" << bad << "': " << error.value_or("no error"));
    CHECK(mentions(error, "OMPI_COMM_WORLD_RANK"));
    CHECK(mentions(error, "not a non-negative integer"));
  }
  CleanEnvironment env;
  env.set("SLURM_PROCID", "0");
  env.set("SLURM_NTASKS", "2");
  env.set("SLURM_LOCALID", "zero");
  const std::optional<std::string> error = launch_error();
  INFO(error.value_or("no error"));
  CHECK(mentions(error, "SLURM_LOCALID"));
}

TEST_CASE("launch info rejects inconsistent or incomplete variables", "[comm]") {
  CleanEnvironment env;
  SECTION("rank outside the world") {
    env.set("PMI_RANK", "4");
    env.set("PMI_SIZE", "4");
    env.set("MPI_LOCALRANKID", "0");
    const std::optional<std::string> error = launch_error();
    INFO(error.value_or("no error"));
    CHECK(mentions(error, "PMI_RANK=4"));
    CHECK(mentions(error, "below the world size"));
  }
  SECTION("empty world") {
    env.set("SLURM_PROCID", "0");
    env.set("SLURM_NTASKS", "0");
    const std::optional<std::string> error = launch_error();
    INFO(error.value_or("no error"));
    CHECK(mentions(error, "SLURM_NTASKS=0"));
  }
  SECTION("local rank outside the world") {
    env.set("OMPI_COMM_WORLD_RANK", "1");
    env.set("OMPI_COMM_WORLD_SIZE", "2");
    env.set("OMPI_COMM_WORLD_LOCAL_RANK", "2");
    const std::optional<std::string> error = launch_error();
    INFO(error.value_or("no error"));
    CHECK(mentions(error, "OMPI_COMM_WORLD_LOCAL_RANK=2"));
  }
  SECTION("rank without size") {
    env.set("OMPI_COMM_WORLD_RANK", "1");
    const std::optional<std::string> error = launch_error();
    INFO(error.value_or("no error"));
    CHECK(mentions(error, "OMPI_COMM_WORLD_SIZE is not"));
  }
  SECTION("several ranks but no local rank") {
    env.set("PMI_RANK", "1");
    env.set("PMI_SIZE", "2");
    const std::optional<std::string> error = launch_error();
    INFO(error.value_or("no error"));
    CHECK(mentions(error, "no local rank"));
  }
}

TEST_CASE("the collective timeout comes from SRGPT_COMM_TIMEOUT_S", "[comm]") {
  CleanEnvironment env;
  const double default_timeout = CommunicatorOptions{}.timeout_s;
  CHECK(CommunicatorOptions::from_environment().timeout_s == default_timeout);
  env.set("SRGPT_COMM_TIMEOUT_S", "2.5");
  CHECK(CommunicatorOptions::from_environment().timeout_s == 2.5);
  env.set("SRGPT_COMM_TIMEOUT_S", "1e9");
  CHECK(CommunicatorOptions::from_environment().timeout_s == 1e9);
  // 1e10 s would overflow the nanosecond count of a timed wait (MPI_Init's watchdog).
  for (const char* bad : {"", "abc", "0", "-3", "10s", "inf", "1e10"}) {
    env.set("SRGPT_COMM_TIMEOUT_S", bad);
    INFO("SRGPT_COMM_TIMEOUT_S='" << bad << "'");
    CHECK_THROWS_WITH(CommunicatorOptions::from_environment(),
                      contains_substring("SRGPT_COMM_TIMEOUT_S='" + std::string(bad) +
                                         "' is not a number of seconds in (0, 1e9]"));
  }
}
