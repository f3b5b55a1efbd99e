// Package failures carries failed CNI ADDs from the plugin (a short-lived process the runtime starts) to the
// node agent (a long-lived one with a metrics endpoint): the plugin drops one small JSON file per failure into
// a directory on the node, the agent counts, logs and deletes them. A spool of files rather than a socket, so
// that the plugin never waits on the agent and a failure is still counted when the agent was down.
package failures

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// MaxFiles bounds the spool: past it the plugin drops new records (the agent, when it runs, drains the
// directory every few seconds, so this is reached only when the agent is gone).
const MaxFiles = 256

const (
	prefix = "add-failure-"
	suffix = ".json"
)

// Record is one failed ADD.
type Record struct {
	Time time.Time `json:"time"`
	// Cause is a bounded word (kubeapi.Cause, or one of the plugin's own).
	Cause string `json:"cause"`
	// Pod is namespace/name, empty when the runtime named none.
	Pod     string `json:"pod,omitempty"`
	Message string `json:"message"`
}

// Write drops r into dir (created if missing), atomically, unless dir already holds MaxFiles records.
func Write(dir string, r Record) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) >= MaxFiles {
		return fmt.Errorf("%s holds %d records already: is the podidentity-node DaemonSet running on this node? It drains them", dir, len(entries))
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := fmt.Sprintf("%s%d-%s%s", prefix, r.Time.UnixNano(), hex.EncodeToString(rnd[:]), suffix)
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// Drain reads every record of dir and deletes it; a file that is not a record is deleted too (and reported
// in err), so the spool cannot fill up with junk. A missing dir holds nothing.
func Drain(dir string) ([]Record, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var (
		out  []Record
		errs []error
	)
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
			continue // a temporary file being written, or something that is not ours
		}
		path := filepath.Join(dir, name)
		b, err := os.ReadFile(path)
		if err == nil {
			var r Record
			if err = json.Unmarshal(b, &r); err == nil {
				out = append(out, r)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}
