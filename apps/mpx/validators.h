// Flag checks with short messages (CLI11's PositiveNumber prints a 309-digit bound and lets NaN and Inf
// through): every number finite and in range, names non-empty, addresses real addresses.
#pragma once

#include <arpa/inet.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>

namespace mpx::cli {

// A finite number >= low (> low when `strictly`).
inline CLI::Validator finite_number(double low, bool strictly) {
  const std::string want = std::string("a finite number ") + (strictly ? "> " : ">= ") + CLI::detail::to_string(low);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        const double x = std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(x)) return "must be " + want + ", got '" + text + "'";
        if (strictly ? !(x > low) : !(x >= low)) return "must be " + want + ", got " + text;
        return {};
      },
      want);
}
inline CLI::Validator positive() { return finite_number(0, true); }
inline CLI::Validator non_negative() { return finite_number(0, false); }

// A whole number 0 .. 2^64 - 1, written as such (no sign, no wrap-around of -1 or 2^64).
inline CLI::Validator unsigned_64() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        std::uint64_t v = 0;
        const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
          return "must be a whole number from 0 to 18446744073709551615, got '" + text + "'";
        }
        return {};
      },
      "0 .. 2^64-1");
}

inline CLI::Validator non_empty() {
  return CLI::Validator([](std::string& text) -> std::string { return text.empty() ? "must not be empty" : ""; },
                        "non-empty");
}

// An IPv4 or IPv6 address to listen on (0.0.0.0: every interface).
inline CLI::Validator ip_address() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        unsigned char buffer[16];
        if (::inet_pton(AF_INET, text.c_str(), buffer) == 1 || ::inet_pton(AF_INET6, text.c_str(), buffer) == 1) return {};
        return "must be an IPv4 or IPv6 address (127.0.0.1, 0.0.0.0 for every interface, ::1), got '" + text + "'";
      },
      "IP address");
}

}  // namespace mpx::cli
