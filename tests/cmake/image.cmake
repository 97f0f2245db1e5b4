# Weights images (tests/cli/image_test.sh): convert --to ferry --weights FMT,
# generate from the image, and what an image must refuse. Labelled unit too,
# so the sanitizer build runs the mapped load and its release.
if(TARGET ferry)
  add_test(NAME cli_image
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/image_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_image_work)
  set_tests_properties(cli_image PROPERTIES LABELS "cli;unit" TIMEOUT 300)
endif()
