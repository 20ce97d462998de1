// What both Node suites use: the fixture, numbered checks, sha256.
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";

let count = 0;

export function fail(message) {
  throw new Error(message);
}

export function ok(message) {
  count += 1;
  console.log(`ok ${count} - ${message}`);
}

export function check(condition, message, detail) {
  if (!condition) {
    fail(`${message}${detail === undefined ? "" : `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`}`);
  }
  ok(message);
}

export function equal(actual, expected, message) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) {
    fail(`${message}: got ${a}, expected ${e}`);
  }
  ok(`${message} (${e.length > 120 ? `${e.slice(0, 117)}...` : e})`);
}

/** How many checks have passed so far. */
export const checks = () => count;

export const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

export const fixture = JSON.parse(readFileSync(process.env.FIXTURE ?? fail("FIXTURE is not set"), "utf8"));
