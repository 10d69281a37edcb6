#!/usr/bin/env bash
# Seeds each fuzz target's corpus from fixtures/ (run from fuzz/).
set -euo pipefail
cd "$(dirname "$0")"
for t in soap_response soap_request postal_json portal_json cccd api_bodies; do mkdir -p "corpus/$t"; done
cp ../fixtures/population/*response*.xml ../fixtures/population/fault.xml corpus/soap_response/
cp ../fixtures/population/hostile/* corpus/soap_response/
cp ../fixtures/population/*request*.xml corpus/soap_request/
cp ../fixtures/postal/*.json corpus/postal_json/
cp ../fixtures/portal/*.json corpus/portal_json/
printf '083173316997' > corpus/cccd/valid
printf '0831733169' > corpus/cccd/short
printf '{"citizen_id":"083173316997","full_name":"Võ Ngọc Trang","date_of_birth":"1973-09-27","procedure_code":"1.001612","officer_id":"CB"}' > corpus/api_bodies/verification
printf '{"status":"processing","occurred_at":"2026-11-27T08:00:00+07:00","handler":"A","content":"x"}' > corpus/api_bodies/event
