# cli.cmake — the `shiplog` CLI, its test, and the network half of
# shiplog-bench.  Included by node/CMakeLists.txt after shiplog-client exists.
pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
pkg_check_modules(LIBEDIT REQUIRED IMPORTED_TARGET libedit)

add_executable(shiplog ${CMAKE_CURRENT_SOURCE_DIR}/cli.c ${CMAKE_CURRENT_SOURCE_DIR}/cli_repl.c)
target_link_libraries(shiplog PRIVATE shiplog-client PkgConfig::JANSSON PkgConfig::LIBEDIT)

add_test(NAME test_cli COMMAND ${CMAKE_SOURCE_DIR}/tests/node/test_cli.sh ${CMAKE_BINARY_DIR})
set_tests_properties(test_cli PROPERTIES TIMEOUT 120 LABELS "node")
# a resolver that never answers (a network namespace of its own; 77: skipped)
add_test(NAME test_resolve COMMAND ${CMAKE_SOURCE_DIR}/tests/node/test_resolve.sh ${CMAKE_BINARY_DIR})
set_tests_properties(test_resolve PROPERTIES TIMEOUT 60 LABELS "node" SKIP_RETURN_CODE 77)
# more connections than the descriptor limit leaves for them (77: skipped)
add_test(NAME test_fdlimit COMMAND ${CMAKE_SOURCE_DIR}/tests/node/test_fdlimit.sh ${CMAKE_BINARY_DIR})
set_tests_properties(test_fdlimit PROPERTIES TIMEOUT 120 LABELS "node" SKIP_RETURN_CODE 77)

# shiplog-bench --url URL: the network benchmark (tests/bench/netbench.c);
# shiplog-bench repl: the replication benchmark (tests/bench/replbench.c);
# shiplog-bench floor: the machine's transport and fsync floors (floorbench.c).
# The top-level CMakeLists.txt defines shiplog-bench only after adding node/,
# so the hook is deferred to the end of the top-level directory.
function(sl_netbench_hook)
  if(TARGET shiplog-bench)
    target_sources(shiplog-bench PRIVATE ${CMAKE_SOURCE_DIR}/tests/bench/netbench.c
      ${CMAKE_SOURCE_DIR}/tests/bench/replbench.c
      ${CMAKE_SOURCE_DIR}/tests/bench/spclient.c
      ${CMAKE_SOURCE_DIR}/tests/bench/floorbench.c)
    target_link_libraries(shiplog-bench PRIVATE shiplog-client Threads::Threads)
    target_compile_definitions(shiplog-bench PRIVATE SL_HAVE_NETBENCH)
  endif()
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL sl_netbench_hook)
