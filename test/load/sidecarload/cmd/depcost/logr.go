//go:build depcost_logr

package main

import (
	"log/slog"
	"os"

	"github.com/go-logr/logr"
)

// The sidecar logs structured JSON through logr over slog.
func init() {
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil))
	log.Info("depcost", "dependency", "logr")
}
