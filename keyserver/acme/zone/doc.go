// Package zone is a small authoritative DNS server for a delegated ACME
// challenge zone (for example acme.example.org), which lets the keyserver
// answer dns-01 challenges without a DNS provider's API.
//
// Operators delegate the zone to the keyservers (NS records at its
// parent) and CNAME _acme-challenge.<name> to <name>.<zone>, once per
// name. Provider, lego's dns-01 provider, puts each challenge's TXT value
// in the shared store, and every keyserver's Server answers from the
// store, so whichever keyserver the CA's resolver reaches answers.
//
// Trust: Server answers anyone, and what it serves is public by design
// (a TXT value is a digest the CA must be able to read). It never writes
// to the store; only Provider, on the keyserver's ACME side, does. It
// answers nothing outside its zone, REFUSED without reading the store, so
// that queries for other names cost nothing, and it offers no recursion,
// zone transfer, update or NOTIFY. Queries are parsed by
// github.com/miekg/dns, which drops or refuses malformed ones.
//
// What Server answers, with the AA flag, for a name in the zone:
//
//   - At the apex, SOA and NS; any other type there is NODATA.
//   - Below the apex, TXT: one record per value in the store, each value
//     a single string. Another type at a name that has values is NODATA;
//     a name without values is NXDOMAIN.
//   - ANY, after RFC 8482 §4.1, gets one true RRset: the SOA at the apex,
//     the TXT set elsewhere (what an operator's "dig ANY" wants to see).
//   - Negative answers carry the SOA, whose TTL and minimum are the TTL,
//     so that a resolver which asked before Present soon asks again.
//   - The SOA serial is the current Unix time: no secondaries transfer
//     the zone, so nothing orders versions by it, and a serial that only
//     grows keeps tools that compare serials content.
//   - Empty non-terminals (example.com.<zone> when only
//     www.example.com.<zone> has values) are NXDOMAIN, not NODATA: telling
//     them apart would take a scan of every challenge in the store for
//     each query. Resolvers that minimise query names (RFC 9156) fall back
//     to the full name on an NXDOMAIN from an unsigned zone such as this
//     one, unless configured strictly.
package zone
