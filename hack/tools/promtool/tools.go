//go:build tools

// Package tools keeps the promtool command in this module's graph.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
