// Package version carries the build's version, stamped by the Makefile through -ldflags.
package version

// Version is set at link time (-X github.com/podidentity/podidentity/internal/version.Version=...).
var Version = "dev"
