# Writes base/version.cc (OUT) from base/version.cc.in (IN) with the project
# version (VERSION) and the git revision of SOURCE_DIR. Run by the build
# (`cmake -P`, target dsv2_version_cc) every time, so the revision is that
# of the build, not of the last configure; configure_file leaves OUT
# untouched when nothing changed, and Ninja then rebuilds nothing.
#
# Revision: `git describe --always --dirty` of SOURCE_DIR; else the
# environment's DSV2_GIT_REVISION (a build without .git: the container build
# passes it as a build argument); else "unknown".
set(DSV2_VERSION "${VERSION}")
set(DSV2_GIT_REVISION "")
find_program(GIT_EXECUTABLE git)
if(GIT_EXECUTABLE)
  # safe.directory: a checkout owned by another user (a container build, CI)
  # is still ours to describe.
  set(git "${GIT_EXECUTABLE}" -c "safe.directory=${SOURCE_DIR}" -C "${SOURCE_DIR}")
  # Only when SOURCE_DIR is the top of a checkout: an exported tree inside
  # some other repository must not report that repository's revision.
  execute_process(COMMAND ${git} rev-parse --show-toplevel
    OUTPUT_VARIABLE top OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE git_result)
  file(REAL_PATH "${SOURCE_DIR}" source_real)
  if(git_result EQUAL 0 AND NOT top STREQUAL "")
    file(REAL_PATH "${top}" top_real)
  else()
    set(top_real "")
  endif()
  if(top_real STREQUAL source_real)
    execute_process(COMMAND ${git} describe --always --dirty --abbrev=12
      OUTPUT_VARIABLE DSV2_GIT_REVISION OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
      RESULT_VARIABLE git_result)
    if(NOT git_result EQUAL 0)
      set(DSV2_GIT_REVISION "")
    endif()
  endif()
endif()
if(DSV2_GIT_REVISION STREQUAL "" AND NOT "$ENV{DSV2_GIT_REVISION}" STREQUAL "")
  set(DSV2_GIT_REVISION "$ENV{DSV2_GIT_REVISION}")
endif()
if(DSV2_GIT_REVISION STREQUAL "")
  set(DSV2_GIT_REVISION "unknown")
endif()
# Only characters that are safe inside a C++ string literal and one line.
string(REGEX REPLACE "[^A-Za-z0-9._+-]" "_" DSV2_GIT_REVISION "${DSV2_GIT_REVISION}")
configure_file("${IN}" "${OUT}" @ONLY)
