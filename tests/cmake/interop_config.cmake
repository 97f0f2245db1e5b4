# config.json against transformers' DeepseekV3Config (tools/interop/config_check.py):
# ferry's written configs load in transformers with the same values, and a
# config saved by transformers (rope_parameters yarn) reads in ferry to the
# same numbers. config_echo is ferry's reader + writer as a tool.
add_executable(config_echo ${CMAKE_SOURCE_DIR}/tests/interop/config_echo.c)
target_link_libraries(config_echo PRIVATE ferrycore)
fy_interop_test(interop_config tools/interop/config_check.py --echo $<TARGET_FILE:config_echo>)
