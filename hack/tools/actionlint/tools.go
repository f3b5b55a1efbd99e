//go:build tools

// Package tools keeps the actionlint command in this module's graph.
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
