# cmake -DSOURCE=DIR -DBINARY=DIR [-DC_COMPILER=cc] -P build-plain.cmake
#
# Configure and build spamtrapd and spamtrapctl without sanitizers (Debug)
# in BINARY, for ctest's valgrind.session in a sanitizer build: valgrind
# cannot run programs built with ASan. Incremental after the first run.
foreach(var SOURCE BINARY)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "build-plain.cmake: -D${var}=... is required")
  endif()
endforeach()
set(compiler)
if(C_COMPILER)
  set(compiler -DCMAKE_C_COMPILER=${C_COMPILER})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY} -DCMAKE_BUILD_TYPE=Debug
                        -DSPAMTRAPD_SANITIZE=OFF -DSPAMTRAPD_TESTS=OFF -DSPAMTRAPD_BENCH=OFF ${compiler}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the plain build in ${BINARY} failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY} --target spamtrapd spamtrapctl --parallel 2
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the plain spamtrapd and spamtrapctl in ${BINARY} failed")
endif()
