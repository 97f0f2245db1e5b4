# The cpu kernels promise the same bits on every ISA (cpu.h): the library
# must hold no fused multiply-add, which the avx512f target_clones would get
# from GCC's default contraction (CMakeLists.txt builds with -ffp-contract=off).
find_program(FERRY_OBJDUMP objdump)
if(FERRY_OBJDUMP)
  add_test(NAME cpu_no_fma COMMAND sh -c
    "n=$(${FERRY_OBJDUMP} -d \"$1\" | grep -cE 'vfn?m(add|sub)'); echo \"fused multiply-adds in libferrycore: $n\"; test \"$n\" -eq 0"
    sh $<TARGET_FILE:ferrycore>)
  set_tests_properties(cpu_no_fma PROPERTIES LABELS unit)
else()
  message(STATUS "ferry: objdump not found, test cpu_no_fma not registered")
endif()
