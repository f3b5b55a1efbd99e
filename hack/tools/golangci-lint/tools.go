//go:build tools

// Package tools keeps the golangci-lint command in this module's graph.
package tools

import _ "github.com/golangci/golangci-lint/v2/cmd/golangci-lint"
