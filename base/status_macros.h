// Early-return helpers for absl::Status / absl::StatusOr (header only).
#ifndef DSV2_BASE_STATUS_MACROS_H_
#define DSV2_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DSV2_STATUS_CONCAT_INNER_(a, b) a##b
#define DSV2_STATUS_CONCAT_(a, b) DSV2_STATUS_CONCAT_INNER_(a, b)

#define DSV2_RETURN_IF_ERROR(expr)              \
  do {                                          \
    const ::absl::Status _dsv2_status = (expr); \
    if (!_dsv2_status.ok()) return _dsv2_status; \
  } while (0)

// DSV2_ASSIGN_OR_RETURN(lhs, expr): lhs may be a declaration ("auto x").
#define DSV2_ASSIGN_OR_RETURN(lhs, expr) \
  DSV2_ASSIGN_OR_RETURN_IMPL_(DSV2_STATUS_CONCAT_(_dsv2_statusor_, __LINE__), lhs, expr)
#define DSV2_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(*tmp)

#endif  // DSV2_BASE_STATUS_MACROS_H_
