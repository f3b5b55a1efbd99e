//go:build tools

// Package tools keeps the generator commands in this module's graph.
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
