// Reading a process's Prometheus /metrics from a test: GET over a plain
// socket (no HTTP client library in the build) and one series' value.
// Header-only, so every test binary can use it without a link dependency.
//
// Thread-safety: pure functions.
#ifndef DSV2_TESTS_COMMON_METRICS_SCRAPE_H_
#define DSV2_TESTS_COMMON_METRICS_SCRAPE_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace dsv2::testing_util {

// The whole HTTP/1.0 response to GET /metrics on 127.0.0.1:`port`; "" when
// the connection fails.
inline std::string ScrapeMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;)
        out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return out;
}

// The value of one series in a Prometheus text exposition (`series` is
// "name{labels}" exactly as printed); -1 when absent.
inline double SeriesValue(const std::string& exposition, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ")) {
      return std::stod(std::string(line));
    }
  }
  return -1;
}

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_METRICS_SCRAPE_H_
