// `dsv2 up`: starts a local cluster (dsv2-coordinator, expert shards,
// attention nodes) as child processes on loopback, prints one ready line
// once it serves, and stops it in order on SIGINT/SIGTERM (contract in
// README.md, "dsv2 up and dsv2 generate").
#ifndef DSV2_TOOLS_DSV2_UP_COMMAND_H_
#define DSV2_TOOLS_DSV2_UP_COMMAND_H_

namespace dsv2 {

// argv[1] == "up". Returns the process exit code: 0 after a stop by
// SIGINT/SIGTERM, 2 for a usage error, 1 when start-up fails or the
// coordinator dies.
int UpCommandMain(int argc, char** argv);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_UP_COMMAND_H_
