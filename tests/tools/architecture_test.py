"""tools/check_architecture.py against the real tree and against small
synthetic trees (the real rules file, a few files per part) with violations
planted on purpose: each must be reported with its file and line, and nothing
else may be."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKER = os.path.join(ROOT, "tools", "check_architecture.py")
RULES = os.path.join(ROOT, "docs", "architecture.json")

VIOLATION_RE = re.compile(
    r"^(\S+):(\d+): (\S+) -> (\S+) (?:\S+ )?(?:<\S+> )?is (forbidden|not allowed)")

# A tree that follows docs/architecture.json: every part, a library and its
# edge per service, a coordinator target mixing its library and edge files,
# generated *.pb.h, external headers where they belong, CMake comments,
# multi-line links and generator expressions.
CLEAN_TREE = {
    "CMakeLists.txt": """
        cmake_minimum_required(VERSION 3.25)
        project(dsv2 LANGUAGES CXX)
        foreach(dir base kernels model router transport metrics proto service
                expert_service attention_service coordinator tools tests)
          add_subdirectory(${dir})
        endforeach()
    """,
    "base/CMakeLists.txt": """
        add_library(dsv2_base flags.cc)
        target_link_libraries(dsv2_base PUBLIC absl::status absl::strings)
    """,
    "base/status_macros.h": '#include "absl/status/status.h"\n',
    "base/flags.cc": '#include "base/status_macros.h"\n',
    "kernels/CMakeLists.txt": """
        add_library(dsv2_kernels ops.cc cpu/gemm.cc)
        target_link_libraries(dsv2_kernels PUBLIC dsv2_base Threads::Threads)
    """,
    "kernels/ops.h": '#include "base/status_macros.h"\n',
    "kernels/ops.cc": '#include "kernels/ops.h"\n#include "kernels/cpu/gemm_internal.h"\n',
    "kernels/cpu/gemm_internal.h": "#include <vector>\n",
    "kernels/cpu/gemm.cc": '#include "gemm_internal.h"\n',
    "model/CMakeLists.txt": """
        # target_link_libraries(dsv2_model PUBLIC dsv2_tools) -- a comment, not a link
        add_library(dsv2_model config.cc tokenizer.cc)
        target_link_libraries(dsv2_model PUBLIC dsv2_kernels nlohmann_json::nlohmann_json)
    """,
    "model/config.h": '#include "kernels/ops.h"\n#include "nlohmann/json.hpp"\n',
    "model/config.cc": """
        #include "model/config.h"
        /* An old include, commented out:
        #include "tools/dsv2/local_engine.h"
        */
        #include "model/tokenizer_internal.h"
    """,
    "model/tokenizer_internal.h": '#include "re2/re2.h"\n',
    "model/tokenizer.cc": '#include "model/tokenizer_internal.h"\n',
    "router/CMakeLists.txt": """
        add_library(dsv2_router plan.cc)
        target_link_libraries(dsv2_router PUBLIC dsv2_model dsv2_kernels)
    """,
    "router/plan.h": '#include "model/config.h"\n',
    "router/plan.cc": '#include "router/plan.h"\n#include "kernels/ops.h"\n',
    "transport/CMakeLists.txt": """
        add_library(dsv2_transport data_plane.cc)
        target_link_libraries(dsv2_transport PUBLIC dsv2_base PRIVATE PkgConfig::UCX)
    """,
    "transport/data_plane.h": '#include "base/status_macros.h"\n',
    "transport/data_plane.cc": '#include "transport/data_plane.h"\n#include <ucp/api/ucp.h>\n',
    "metrics/CMakeLists.txt": """
        add_library(dsv2_metrics metrics.cc)
        target_link_libraries(dsv2_metrics PUBLIC prometheus-cpp::core dsv2_base)
    """,
    "metrics/metrics.h": "#include <prometheus/registry.h>\n",
    "metrics/metrics.cc": '#include "metrics/metrics.h"\n',
    "proto/CMakeLists.txt": """
        set(DSV2_PROTOS placement.proto inference.proto)
        add_library(dsv2_proto ${DSV2_PROTOS})
        target_link_libraries(dsv2_proto PUBLIC protobuf::libprotobuf gRPC::grpc++)
        protobuf_generate(TARGET dsv2_proto LANGUAGE grpc
          PLUGIN "protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin>")
    """,
    "proto/placement.proto": 'syntax = "proto3";\n',
    "proto/inference.proto": 'syntax = "proto3";\n',
    "service/CMakeLists.txt": """
        add_library(dsv2_service_edge service_common.cc coordinator_link.cc)
        target_link_libraries(dsv2_service_edge PUBLIC
          dsv2_base dsv2_proto dsv2_router
          dsv2_transport spdlog::spdlog)
    """,
    "service/service_common.h": """
        #include <grpcpp/grpcpp.h>
        #include "placement.pb.h"
        #include "router/plan.h"
        #include "transport/data_plane.h"
    """,
    "service/service_common.cc": '#include "service/service_common.h"\n',
    "service/coordinator_link.cc": '#include "coordinator.grpc.pb.h"\n#include "base/flags.h"\n',
    "attention_service/CMakeLists.txt": """
        add_library(dsv2_attention_service layer_loop.cc data_plane_expert_backend.cc)
        target_link_libraries(dsv2_attention_service PUBLIC dsv2_router dsv2_transport)
        add_library(dsv2_attention_server node_server.cc)
        target_link_libraries(dsv2_attention_server PUBLIC dsv2_attention_service
          dsv2_service_edge)
        add_executable(dsv2-attention main.cc)
        target_link_libraries(dsv2-attention PRIVATE dsv2_attention_server dsv2_metrics)
    """,
    "attention_service/layer_loop.h": '#include "router/plan.h"\n',
    "attention_service/layer_loop.cc": '#include "attention_service/layer_loop.h"\n',
    "attention_service/data_plane_expert_backend.cc": '#include "transport/data_plane.h"\n',
    "attention_service/node_server.h": """
        #include "attention_node.grpc.pb.h"
        #include "attention_service/layer_loop.h"
    """,
    "attention_service/node_server.cc": """
        #include "attention_service/node_server.h"
        #include "service/service_common.h"
    """,
    "attention_service/main.cc": """
        #include <grpcpp/grpcpp.h>
        #include "attention_service/node_server.h"
        #include "metrics/metrics.h"
    """,
    "expert_service/CMakeLists.txt": """
        add_library(dsv2_expert_service expert_compute.cc data_plane_server.cc)
        target_link_libraries(dsv2_expert_service
          PUBLIC
            dsv2_router  # gate and plan types
            $<$<BOOL:${DSV2_WITH_CUDA}>:dsv2_cuda_kernels>
          PRIVATE
            dsv2_transport)
        add_library(dsv2_expert_server control_server.cc)
        target_link_libraries(dsv2_expert_server PUBLIC dsv2_expert_service dsv2_service_edge)
        add_executable(dsv2-expert main.cc)
        target_link_libraries(dsv2-expert PRIVATE dsv2_expert_server dsv2_metrics)
    """,
    "expert_service/expert_compute.h": '#include "router/plan.h"\n',
    "expert_service/expert_compute.cc": """
        #include "expert_service/expert_compute.h"
        #include "model/config.h"
    """,
    "expert_service/data_plane_server.cc": '#include "transport/data_plane.h"\n',
    "expert_service/control_server.cc": """
        #include "expert_shard.grpc.pb.h"
        #include "service/service_common.h"
        #include "expert_service/expert_compute.h"
    """,
    "expert_service/main.cc": '#include "expert_service/control_server.h"\n',
    "expert_service/control_server.h": '#include "expert_service/expert_compute.h"\n',
    "coordinator/CMakeLists.txt": """
        add_library(dsv2_coordinator cluster_state.cc coordinator_server.cc)
        target_link_libraries(dsv2_coordinator PUBLIC dsv2_proto dsv2_model dsv2_router
          dsv2_metrics)
        add_executable(dsv2-coordinator main.cc)
        target_link_libraries(dsv2-coordinator PRIVATE dsv2_coordinator dsv2_service_edge
          gRPC::grpc++_reflection)
    """,
    "coordinator/cluster_state.h": '#include "router/plan.h"\n',
    "coordinator/cluster_state.cc": """
        #include "coordinator/cluster_state.h"
        #include "model/config.h"
        #include "base/status_macros.h"
    """,
    "coordinator/coordinator_server.cc": """
        #include <grpcpp/grpcpp.h>
        #include "inference.grpc.pb.h"
        #include "coordinator/cluster_state.h"
        #include "metrics/metrics.h"
    """,
    "coordinator/main.cc": '#include "service/service_common.h"\n',
    "tools/CMakeLists.txt": """
        add_library(dsv2_tools dsv2/local_engine.cc)
        target_link_libraries(dsv2_tools PUBLIC dsv2_attention_service dsv2_expert_service
          dsv2_base)
        add_executable(dsv2 dsv2/main.cc)
        target_link_libraries(dsv2 PRIVATE dsv2_tools dsv2_proto)
    """,
    "tools/dsv2/local_engine.h": """
        #include "attention_service/layer_loop.h"
        #include "expert_service/expert_compute.h"
    """,
    "tools/dsv2/local_engine.cc": '#include "tools/dsv2/local_engine.h"\n',
    "tools/dsv2/main.cc": '#include "tools/dsv2/local_engine.h"\n#include "inference.grpc.pb.h"\n',
    "tests/CMakeLists.txt": """
        function(dsv2_test name)
          cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
          add_executable(${name} ${T_SOURCES})
          target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest_main)
        endfunction()
        dsv2_test(model_test SOURCES model/config_test.cc LIBS dsv2_model)
        add_executable(engine_test tools/engine_test.cc)
        target_link_libraries(engine_test PRIVATE dsv2_tools dsv2_attention_server GTest::gtest)
    """,
    "tests/model/config_test.cc": """
        #include "gtest/gtest.h"
        #include "model/tokenizer_internal.h"
    """,
    "tests/tools/engine_test.cc": """
        #include "tools/dsv2/local_engine.h"
        #include "attention_service/node_server.h"
        #include <grpcpp/grpcpp.h>
    """,
}


def run_checker(root, *extra):
    return subprocess.run([sys.executable, CHECKER, "--root", root, *extra],
                          capture_output=True, text=True)


def violations(output):
    """{(path, line, from, to)} of every violation line."""
    found = set()
    for line in output.splitlines():
        m = VIOLATION_RE.match(line)
        if m:
            found.add((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    return found


class RealTreeTest(unittest.TestCase):
    def test_real_tree_follows_the_architecture(self):
        result = subprocess.run([sys.executable, CHECKER], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("check_architecture: OK", result.stdout)


class SyntheticTreeTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="dsv2_arch_")
        self.addCleanup(shutil.rmtree, self.root)
        os.makedirs(os.path.join(self.root, "docs"))
        shutil.copy(RULES, os.path.join(self.root, "docs", "architecture.json"))
        for path, text in CLEAN_TREE.items():
            self.write(path, textwrap.dedent(text).lstrip("\n"))

    def write(self, path, text):
        full = os.path.join(self.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as f:
            f.write(text)

    def plant(self, path, after, line_text):
        """Inserts line_text after the first line containing `after` (or at the
        end when after is None); returns its 1-based line number."""
        full = os.path.join(self.root, path)
        with open(full, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if after is None:
            index = len(lines)
        else:
            index = next(i for i, line in enumerate(lines) if after in line) + 1
        lines.insert(index, line_text)
        self.write(path, "\n".join(lines) + "\n")
        return index + 1

    def check(self):
        result = run_checker(self.root)
        return result, result.stdout + result.stderr

    def test_clean_tree_passes(self):
        result, output = self.check()
        self.assertEqual(result.returncode, 0, output)
        self.assertEqual(violations(output), set(), output)
        self.assertRegex(result.stdout, r"check_architecture: OK: \d+ files, \d+ #includes, "
                                        r"\d+ CMake targets, \d+ links")

    def test_planted_violations_name_file_and_line(self):
        expected = set()
        # A service library reaching into the composition root.
        tools_line = self.plant("expert_service/expert_compute.cc", None,
                                '#include "tools/dsv2/local_engine.h"')
        expected.add(("expert_service/expert_compute.cc", tools_line, "expert_service", "tools"))
        # gRPC and a generated proto header in model code.
        line = self.plant("model/config.cc", '#include "model/config.h"',
                          "#include <grpcpp/grpcpp.h>")
        expected.add(("model/config.cc", line, "model", "gRPC/protobuf"))
        line = self.plant("model/config.cc", "#include <grpcpp/grpcpp.h>",
                          '#include "inference.pb.h"')
        expected.add(("model/config.cc", line, "model", "proto"))
        # One service library linking the other, inside a multi-line call.
        line = self.plant("expert_service/CMakeLists.txt", "dsv2_router  # gate",
                          "    dsv2_attention_service")
        expected.add(("expert_service/CMakeLists.txt", line, "expert_service",
                      "attention_service"))

        result, output = self.check()
        self.assertEqual(result.returncode, 1, output)
        self.assertEqual(violations(output), expected, output)
        self.assertIn(f"expert_service/expert_compute.cc:{tools_line}: "
                      "expert_service -> tools is forbidden: tools/ is the composition root",
                      output)
        self.assertIn("[dsv2_expert_service links dsv2_attention_service]", output)
        self.assertIn("model -> gRPC/protobuf <grpcpp/grpcpp.h> is forbidden: no gRPC headers "
                      "in model or kernel code", output)

    def test_the_known_bad_arrows_of_the_old_layout(self):
        expected = set()
        # The coordinator on kernels/ (status macros) and on a private model header.
        line = self.plant("coordinator/cluster_state.cc", None, '#include "kernels/ops.h"')
        expected.add(("coordinator/cluster_state.cc", line, "coordinator", "kernels"))
        line = self.plant("coordinator/coordinator_server.cc", None,
                          '#include "model/tokenizer_internal.h"')
        expected.add(("coordinator/coordinator_server.cc", line, "coordinator.edge", "model"))
        # Any part's private header (kernels' own tests-only helpers).
        line = self.plant("router/plan.cc", None, '#include "kernels/cpu/gemm_internal.h"')
        expected.add(("router/plan.cc", line, "router", "kernels"))
        # A service edge on tools/, by include and by link.
        line = self.plant("attention_service/node_server.cc", None,
                          '#include "tools/dsv2/local_engine.h"')
        expected.add(("attention_service/node_server.cc", line, "attention_service.edge",
                      "tools"))
        line = self.plant("coordinator/CMakeLists.txt", "gRPC::grpc++_reflection",
                          "target_link_libraries(dsv2-coordinator PRIVATE dsv2_tools)")
        expected.add(("coordinator/CMakeLists.txt", line, "coordinator.edge", "tools"))
        # The attention library on its own gRPC edge and on the expert service.
        line = self.plant("attention_service/layer_loop.cc", None,
                          '#include "attention_service/node_server.h"')
        expected.add(("attention_service/layer_loop.cc", line, "attention_service",
                      "attention_service.edge"))
        line = self.plant("attention_service/layer_loop.cc", None,
                          '#include "expert_service/expert_compute.h"')
        expected.add(("attention_service/layer_loop.cc", line, "attention_service",
                      "expert_service"))
        # transport on something of ours other than base; service/ on docs/
        # (neither allowed nor forbidden: "not allowed").
        line = self.plant("transport/data_plane.cc", None, '#include "model/config.h"')
        expected.add(("transport/data_plane.cc", line, "transport", "model"))
        line = self.plant("service/service_common.cc", None, '#include "docs/example.h"')
        expected.add(("service/service_common.cc", line, "service", "docs"))

        result, output = self.check()
        self.assertEqual(result.returncode, 1, output)
        self.assertEqual(violations(output), expected, output)
        self.assertIn("model/tokenizer_internal.h is private to model", output)
        self.assertIn("service -> docs is not allowed", output)

    def test_a_file_outside_every_part_fails(self):
        self.write("stray/main.cc", "int main() {}\n")
        result, output = self.check()
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("stray/main.cc:1: stray/main.cc belongs to no part", output)

    def test_a_broken_rules_file_is_a_usage_error(self):
        path = os.path.join(self.root, "docs", "architecture.json")
        with open(path, encoding="utf-8") as f:
            rules = json.load(f)
        rules["parts"]["model"]["allowed"].append("no_such_part")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rules, f)
        result, output = self.check()
        self.assertEqual(result.returncode, 2, output)
        self.assertIn("unknown part 'no_such_part'", output)


if __name__ == "__main__":
    unittest.main()
