//go:build tools

// Package tools keeps the kustomize command in this module's graph.
package tools

import _ "sigs.k8s.io/kustomize/kustomize/v5"
