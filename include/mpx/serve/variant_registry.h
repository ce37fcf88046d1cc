// The variants an engine has loaded, by serving name (fp32, bf16, ...), shared by the image classifiers'
// ServingEngine and a GPT's GenerationEngine: one mutex guards the map, which grows when an admin switch
// builds a variant that was not loaded.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace mpx::serve {

template <class Variant>
class VariantRegistry {
 public:
  using Map = std::map<std::string, std::shared_ptr<Variant>>;
  std::mutex& mutex() const { return mutex_; }
  Map& locked() { return map_; }  // with mutex() held
  const Map& locked() const { return map_; }

  std::shared_ptr<Variant> at(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return map_.at(name);
  }
  std::vector<std::string> names() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [name, v] : map_) out.push_back(name);
    return out;
  }
  // [{"name", "preset", "weights"}] for /admin/precision and the routing.
  nlohmann::json describe() const {
    std::lock_guard<std::mutex> lock(mutex_);
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [name, v] : map_) out.push_back({{"name", name}, {"preset", v->preset()}, {"weights", v->weights_file()}});
    return out;
  }

 private:
  mutable std::mutex mutex_;
  Map map_;
};

}  // namespace mpx::serve
