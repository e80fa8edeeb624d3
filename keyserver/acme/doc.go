// Package acme is the keyserver's side of public certificates: it obtains
// and renews, over ACME (RFC 8555, through lego), the certificates the
// policy's acme: section names, and answers the CA's challenges from the
// store, so that whichever keyserver a challenge reaches can answer it.
package acme
