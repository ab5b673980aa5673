#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "srgpt/checkpoint.h"
#include "srgpt/cli.h"
#include "srgpt/error.h"

namespace srgpt {

void add_info_command(CLI::App& app) {
  struct Args {
    std::string checkpoint;
    bool json = false;
    bool verify = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("info", "Describe a checkpoint: step, model, precision, files and tensors");
  cmd->add_option("checkpoint", args->checkpoint, "Checkpoint directory, or a run directory (newest checkpoint)")
      ->required();
  cmd->add_flag("--json", args->json, "Print the whole manifest as JSON");
  cmd->add_flag("--verify", args->verify, "Read every file and check its size and CRC32");
  cmd->callback([args]() {
    CheckpointReader reader(resolve_checkpoint_dir(args->checkpoint));
    const nlohmann::json& m = reader.manifest();
    if (args->verify) {
      for (const auto& f : m.at("files"))
        for (const auto& t : f.at("tensors")) {
          DType dt;
          if (!parse_dtype(t.at("dtype").get<std::string>(), &dt))
            fail("{}: tensor {} has unknown dtype {}", f.at("name").get<std::string>(), t.at("name").get<std::string>(),
                 t.at("dtype").dump());
          std::vector<char> buf(t.at("bytes").get<size_t>());
          reader.read_tensor(f.at("name").get<std::string>(), t.at("name").get<std::string>(), dt,
                             t.at("shape").get<std::vector<int64_t>>(), buf.data(), buf.size());
        }
    }
    if (args->json) {
      std::printf("%s\n", m.dump(2).c_str());
      return;
    }
    const nlohmann::json& st = reader.state();
    const nlohmann::json& model = st.at("config").at("model");
    std::printf("checkpoint   %s\n", reader.dir().string().c_str());
    std::printf("step         %lld\n", (long long)reader.step());
    std::printf("tokens seen  %lld\n", (long long)st.value("tokens_seen", 0LL));
    std::printf("precision    %s\n", st.value("precision", "?").c_str());
    std::printf("model        %s\n", model.dump().c_str());
    std::printf("world size   %d, zero stage %d\n", st.value("world_size", 1), st.value("zero_stage", 0));
    for (const auto& f : m.at("files"))
      std::printf("file         %-24s %12lld bytes  crc32 %08llx  %zu tensors\n", f.at("name").get<std::string>().c_str(),
                  (long long)f.at("bytes").get<int64_t>(), (unsigned long long)f.at("crc32").get<uint64_t>(),
                  f.at("tensors").size());
    if (args->verify) std::printf("verified     all files read, sizes and checksums match\n");
  });
}

}  // namespace srgpt
