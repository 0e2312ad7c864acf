"""Reads JUnit XML files and prints one line: "N passed, N failed".
Exits 1 when anything failed or a results file is missing."""

import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
missing = []
for path in sys.argv[1:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        missing.append(path)
        continue
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed += 1
            print(f"FAILED: {case.get('classname', '')}::{case.get('name', '')}", file=sys.stderr)
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
for path in missing:
    print(f"no results in {path} (the run did not finish)", file=sys.stderr)
    failed += 1
if skipped:
    print(f"({skipped} skipped)")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
