// Validates a HAR file against the HAR 1.2 schema (har-schema, via har-validator): the same
// shape browsers' DevTools import and HTTP tooling reads. Exit 0 when valid; otherwise every
// error, with its path, on stderr and exit 1.
"use strict";
const fs = require("fs");
const path = require("path");

const modules = process.env.HAR_VALIDATOR_MODULES;
const validator = require(path.join(modules, "har-validator"));

const file = process.argv[2];
const har = JSON.parse(fs.readFileSync(file, "utf8"));
validator
  .har(har)
  .then(() => {
    console.log(`${file}: valid HAR ${har.log.version}, ${har.log.entries.length} entries`);
  })
  .catch((e) => {
    console.error(`${file}: not valid HAR`);
    for (const error of e.errors || [e]) {
      console.error(`  ${error.dataPath || ""} ${error.message}`);
    }
    process.exit(1);
  });
