#!/usr/bin/env bash
# Runs a fixed sample of the PJRT and layer tests under valgrind memcheck: any invalid read or
# write, use after free or other memcheck error fails (exit 1). The only suppressions are the
# plugin-internal ones in scripts/valgrind.supp, each justified there. Installs valgrind with
# apt if it is missing. The sample is fixed and small (valgrind runs ~50x slower): it covers
# compile, deserialize, execute with and without donation, host<->device copies (both paths),
# error conversion, fake short plugin tables, foreign devices, FFI handler registration, the
# LAPACK XLA FFI handlers (call-frame decoding on hand-built frames, a registered handler run by
# XLA, a handler's error returned through XLA) and a FlaxLayer training/save/load cycle.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/apt.sh
need_command valgrind valgrind

export FLAXLAYER_CACHE="${FLAXLAYER_CACHE:-$PWD/target/compile-cache}"

# The test executable cargo builds for `cargo test <args>`.
test_binary() {
  cargo test --locked "$@" --no-run 2>&1 | sed -n 's/^ *Executable .* (\(.*\))$/\1/p' | tail -n1
}

memcheck() {
  local binary=$1; shift
  echo "== valgrind $(basename "$binary"): $*"
  valgrind --quiet --error-exitcode=1 --suppressions=scripts/valgrind.supp \
    "$binary" --exact --test-threads=1 "$@"
}

memcheck "$(test_binary --test it)" \
  pjrt::serialized_executable_runs_the_same \
  pjrt::donated_input_is_consumed_and_borrowed_input_is_kept \
  pjrt::buffers_round_trip_typed_slices \
  pjrt::malformed_mlir_is_a_pjrt_error \
  pjrt::a_device_or_buffer_of_another_client_is_refused \
  pjrt::a_plugin_missing_an_entry_point_is_unsupported_not_a_crash \
  pjrt::a_table_too_short_for_its_version_is_refused_without_reading_past_it \
  state_lost::xla_consumes_donated_buffers_even_when_the_execution_fails \
  layer::dropout_masks_differ_between_steps_and_from_inference \
  layer::save_then_load_gives_the_same_outputs_variables_and_key
memcheck "$(test_binary --lib)" \
  pjrt::xla_ffi::tests::the_cpu_plugin_has_the_ffi_extension \
  pjrt::xla_ffi::tests::a_registered_handler_runs_in_a_custom_call \
  pjrt::xla_ffi_handlers::tests::registration_took_effect_a_lapack_custom_call_compiles_and_runs \
  pjrt::xla_ffi_frame::tests::an_aliased_operand_is_factored_in_place \
  pjrt::xla_ffi_frame::tests::a_separate_operand_is_copied_in_first \
  pjrt::xla_ffi_frame::tests::overlapping_buffers_are_refused \
  pjrt::xla_ffi_frame::tests::a_panic_is_an_internal_error_not_an_unwind_into_c
