// `optima tokenize`: token ids and pieces of a text, for users checking their data and tokenizer.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "optima/core/error.h"
#include "optima/text/tokenizer.h"

namespace optima::cli {

Command add_tokenize(CLI::App& root) {
  auto* app = root.add_subcommand("tokenize", "Print the token ids (and pieces) of a text");
  struct Options {
    std::string model, text, file;
    bool json = false, no_special = false;
  };
  auto o = std::make_shared<Options>();
  app->add_option("--model", o->model, "Model or tokenizer directory")->required();
  auto* text = app->add_option("--text", o->text, "Text to tokenize");
  auto* file = app->add_option("--file", o->file, "File whose whole content is tokenized");
  text->excludes(file);
  app->add_flag("--no-special", o->no_special, "Do not add BOS or other template tokens");
  app->add_flag("--json", o->json, "Print JSON");
  return {app, [o] {
            std::string input = o->text;
            if (!o->file.empty()) {
              std::ifstream in(o->file, std::ios::binary);
              if (!in) fail_input(o->file, "cannot read file");
              std::stringstream buffer;
              buffer << in.rdbuf();
              input = buffer.str();
            } else if (o->text.empty()) {
              fail_usage("tokenize needs --text or --file");
            }
            const auto tokenizer = load_tokenizer(o->model);
            const std::vector<int64_t> ids = tokenizer->encode(input, !o->no_special);
            std::vector<std::string> pieces;
            pieces.reserve(ids.size());
            for (int64_t id : ids) pieces.push_back(tokenizer->piece(id));
            if (o->json) {
              const nlohmann::json j = {
                  {"tokenizer", tokenizer->describe()}, {"count", ids.size()}, {"ids", ids}, {"pieces", pieces}};
              std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
              return 0;
            }
            std::printf("%s\n%zu tokens\n", tokenizer->describe().c_str(), ids.size());
            for (size_t i = 0; i < ids.size(); ++i)
              std::printf(
                  "%6lld  %s\n", static_cast<long long>(ids[i]),
                  nlohmann::json(pieces[i]).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
            return 0;
          }};
}

}  // namespace optima::cli
