#include <cstdio>
#include <initializer_list>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "srgpt/checkpoint.h"
#include "srgpt/cli.h"
#include "srgpt/error.h"
#include "srgpt/trainer.h"

namespace srgpt {

void add_info_command(CLI::App& app) {
  struct Args {
    std::string checkpoint;
    bool json = false;
    bool verify = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("info", "Describe a checkpoint: step, model, precision, files and tensors");
  add_checkpoint_option(*cmd, args->checkpoint);
  cmd->add_flag("--json", args->json, "Print the whole manifest as JSON");
  cmd->add_flag("--verify", args->verify,
                "Read every file and check its size and CRC32, then load the state, weights and optimizer state as a "
                "resume would and check they are finite");
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
      check_checkpoint_loads(reader);
    }
    if (args->json) {
      std::printf("%s\n", m.dump(2).c_str());
      return;
    }
    // The state is the trainer's (opaque to the checkpoint layer, which
    // validated the rest): describe what is there, and say what is not.
    auto state_field = [&](std::initializer_list<const char*> path) -> std::string {
      const nlohmann::json* j = &reader.state();
      for (const char* key : path) {
        if (!j->is_object() || !j->contains(key)) return "(missing)";
        j = &j->at(key);
      }
      return j->is_string() ? j->get<std::string>() : j->dump();
    };
    std::printf("checkpoint   %s\n", reader.dir().string().c_str());
    std::printf("step         %lld\n", (long long)reader.step());
    std::printf("tokens seen  %s\n", state_field({"tokens_seen"}).c_str());
    std::printf("precision    %s\n", state_field({"precision"}).c_str());
    std::printf("model        %s\n", state_field({"config", "model"}).c_str());
    std::printf("world size   %s, zero stage %s\n", state_field({"world_size"}).c_str(),
                state_field({"zero_stage"}).c_str());
    for (const auto& f : m.at("files"))
      std::printf("file         %-24s %12lld bytes  crc32 %08llx  %zu tensors\n", f.at("name").get<std::string>().c_str(),
                  (long long)f.at("bytes").get<int64_t>(), (unsigned long long)f.at("crc32").get<uint64_t>(),
                  f.at("tensors").size());
    if (args->verify) std::printf("verified     sizes and checksums match; state, weights and optimizer state load and are finite\n");
  });
}

}  // namespace srgpt
