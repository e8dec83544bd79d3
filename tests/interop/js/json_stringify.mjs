// Reads a JSON array of tagged values on stdin and prints a JSON array with,
// per value, the hex of Buffer.from(JSON.stringify(value)).
//
// The tags carry every value to JavaScript without losing anything (JSON
// itself could not: floats, -0 and lone surrogates would be at risk):
//   ["z"]                      null
//   ["b", true|false]          boolean
//   ["i", "-123"]              integer (|n| <= 2**53-1), as decimal text
//   ["f", "1.5e-07"]           float, as Python's repr (round-trips exactly)
//   ["s", [u16, ...]]          string, as its UTF-16 code units
//   ["a", [tagged, ...]]       array
//   ["o", [[[u16, ...], tagged], ...]]   object, keys as code units, in insertion order
// Objects get their keys with defineProperty, so "__proto__" is an own
// property as JSON.parse would make it (a plain assignment would set the
// prototype instead).  JS then applies its own key order (array indices first).

function str(units) {
  let s = "";
  for (let i = 0; i < units.length; i += 4096) {
    s += String.fromCharCode.apply(null, units.slice(i, i + 4096));
  }
  return s;
}

function build(t) {
  switch (t[0]) {
    case "z": return null;
    case "b": return t[1];
    case "i": {
      const n = Number(t[1]);
      if (!Number.isSafeInteger(n)) throw new Error("unsafe integer " + t[1]);
      return n;
    }
    case "f": {
      const x = Number(t[1]);
      if (!Number.isFinite(x)) throw new Error("bad float " + t[1]);
      return x;
    }
    case "s": return str(t[1]);
    case "a": return t[1].map(build);
    case "o": {
      const o = {};
      for (const [k, v] of t[1]) {
        Object.defineProperty(o, str(k), {
          value: build(v), enumerable: true, writable: true, configurable: true,
        });
      }
      return o;
    }
    default: throw new Error("unknown tag " + JSON.stringify(t[0]));
  }
}

const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
  const values = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const out = values.map((t) => Buffer.from(JSON.stringify(build(t)), "utf8").toString("hex"));
  process.stdout.write(JSON.stringify(out) + "\n");
});
