#!/usr/bin/env bash
# Seeds each fuzz target's corpus from fixtures/ (run from fuzz/).
set -euo pipefail
cd "$(dirname "$0")"
targets="soap_response soap_request postal_json portal_json cccd api_bodies client_answers store_records"
for t in $targets; do
  mkdir -p "corpus/$t"
  # The seeds kept in the repository (seeds/<target>/), then the fixtures below.
  if [ -d "seeds/$t" ]; then cp seeds/"$t"/* "corpus/$t/"; fi
done
cp ../fixtures/population/*response*.xml ../fixtures/population/fault.xml corpus/soap_response/
cp ../fixtures/population/hostile/* corpus/soap_response/
cp ../fixtures/population/*request*.xml corpus/soap_request/
cp ../fixtures/postal/*.json corpus/postal_json/
cp ../fixtures/portal/*.json corpus/portal_json/
printf '083173316997' > corpus/cccd/valid
printf '0831733169' > corpus/cccd/short
printf '{"citizen_id":"083173316997","full_name":"Võ Ngọc Trang","date_of_birth":"1973-09-27","procedure_code":"1.001612","officer_id":"CB"}' > corpus/api_bodies/verification
printf '{"status":"processing","occurred_at":"2026-11-27T08:00:00+07:00","handler":"A","content":"x"}' > corpus/api_bodies/event
cp ../fixtures/postal/*.json ../fixtures/portal/*.json corpus/client_answers/ 2>/dev/null || true
# A job record in each layout, made by the code under test's own tests, is not kept: the decoder must
# find its way from the seeds below (a binary header byte, a JSON header length).
printf '\x01' > corpus/store_records/binary-marker
printf '\x00\x00\x00\x02{}' > corpus/store_records/json-header
