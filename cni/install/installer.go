// Package install puts the podidentity-cni plugin on the node and keeps it there: it copies the binary into the
// CNI bin dir, writes the plugin's kubeconfig into the CNI conf dir and chains the plugin's entry into the
// conflist the runtime reads, again whenever the primary CNI rewrites that file or the token rotates; and it
// removes all three on uninstall. The decisions (which file, what its new bytes are, what the kubeconfig
// says) are pure functions in conflist.go and kubeconfig.go; this file only reads and writes files.
package install

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podidentity/podidentity/cni/pluginconf"
)

// Credentials are what the plugin's kubeconfig holds.
type Credentials struct {
	Server string
	CA     []byte
	Token  string
}

// Installer installs and uninstalls the plugin. Its fields are set once; it keeps only the readiness and
// what it last wrote.
type Installer struct {
	// ConfDir and BinDir are the host's CNI directories as the agent sees them (mounted from the host).
	ConfDir string
	BinDir  string
	// PluginBinary is the podidentity-cni binary shipped in the agent's image.
	PluginBinary string
	// KubeconfigName is the kubeconfig's file name in ConfDir; Entry.Kubeconfig must be its host path.
	KubeconfigName string
	Entry          pluginconf.Entry
	// Credentials reads the current server, CA and token (the token file changes when the kubelet rotates it).
	Credentials func() (Credentials, error)
	Log         logr.Logger
	Metrics     *Metrics

	mu     sync.Mutex
	synced bool
	ready  error
	binSig fileSig // the installed binary as last verified
}

type fileSig struct {
	size    int64
	modTime time.Time
}

// Metrics of the installer.
type Metrics struct {
	ready   prometheus.Gauge
	changes *prometheus.CounterVec
}

// NewMetrics registers the installer's metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podidentity_node_plugin_ready",
			Help: "1 when the podidentity-cni plugin is chained into the conflist the runtime reads, with its binary and kubeconfig in place"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podidentity_node_plugin_writes_total",
			Help: "Files the installer (re)wrote, by what: binary, kubeconfig, conflist (a conflist rewrite means the primary CNI rewrote its file)"},
			[]string{"file"}),
	}
	reg.MustRegister(m.ready, m.changes)
	return m
}

// KubeconfigPath is where the installer writes the kubeconfig, as the agent sees it.
func (in *Installer) KubeconfigPath() string { return filepath.Join(in.ConfDir, in.KubeconfigName) }

// Ready is nil once the plugin is chained with its binary and kubeconfig in place, and the reason otherwise.
func (in *Installer) Ready() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.synced {
		return errors.New("the plugin is not installed yet")
	}
	return in.ready
}

func (in *Installer) setReady(err error) {
	in.mu.Lock()
	in.synced, in.ready = true, err
	in.mu.Unlock()
	if in.Metrics != nil {
		v := 0.0
		if err == nil {
			v = 1
		}
		in.Metrics.ready.Set(v)
	}
}

func (in *Installer) wrote(file string) {
	if in.Metrics != nil {
		in.Metrics.changes.WithLabelValues(file).Inc()
	}
}

// Sync makes the node's state right once: binary, kubeconfig, then the chain (the runtime may load the entry
// as soon as it is chained, so the files it names come first). Ready reflects the result.
func (in *Installer) Sync() error {
	err := in.sync()
	in.setReady(err)
	return err
}

func (in *Installer) sync() error {
	if err := in.installBinary(); err != nil {
		return fmt.Errorf("installing the plugin binary into %s: %w", in.BinDir, err)
	}
	if err := in.writeKubeconfig(); err != nil {
		return fmt.Errorf("writing the plugin's kubeconfig %s: %w", in.KubeconfigPath(), err)
	}
	return in.chain()
}

// installBinary copies the binary when the installed one differs (checked byte for byte at start, then by
// size and modification time, which any replacement changes).
func (in *Installer) installBinary() error {
	target := filepath.Join(in.BinDir, pluginconf.PluginType)
	st, err := os.Stat(target)
	if err == nil && in.binSig == (fileSig{st.Size(), st.ModTime()}) {
		return nil
	}
	src, err := os.ReadFile(in.PluginBinary)
	if err != nil {
		return fmt.Errorf("reading %s (the binary shipped in the agent's image; --plugin-binary): %w", in.PluginBinary, err)
	}
	if cur, err := os.ReadFile(target); err != nil || !bytes.Equal(cur, src) {
		if err := writeAtomic(target, src, 0o755); err != nil {
			return err
		}
		in.wrote("binary")
		in.Log.Info("installed the plugin binary", "path", target, "bytes", len(src))
	}
	if st, err = os.Stat(target); err != nil {
		return err
	}
	in.binSig = fileSig{st.Size(), st.ModTime()}
	return nil
}

func (in *Installer) writeKubeconfig() error {
	creds, err := in.Credentials()
	if err != nil {
		return err
	}
	want, err := Kubeconfig(creds.Server, creds.CA, creds.Token)
	if err != nil {
		return err
	}
	path := in.KubeconfigPath()
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, want) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == 0o600 {
			return nil
		}
	}
	if err := writeAtomic(path, want, 0o600); err != nil {
		return err
	}
	in.wrote("kubeconfig")
	in.Log.Info("wrote the plugin's kubeconfig (new token or server)", "path", path)
	return nil
}

// chain chains the entry into the first configuration file of the conf dir.
func (in *Installer) chain() error {
	names, err := confNames(in.ConfDir)
	if err != nil {
		return err
	}
	first, ok := FirstConf(names)
	if !ok {
		return fmt.Errorf("no CNI configuration (*.conf, *.conflist, *.json) in %s yet: the node's primary CNI writes it when it starts; "+
			"the plugin is chained as soon as it appears", in.ConfDir)
	}
	path := filepath.Join(in.ConfDir, first)
	data, mode, err := readWithMode(path)
	if err != nil {
		return err
	}
	res, err := Chain(first, data, in.Entry)
	if err != nil {
		return err
	}
	if !res.Changed {
		return nil
	}
	if res.Replaces != "" && res.Name != first {
		// A .conf becoming a .conflist must not overwrite someone else's .conflist of the same name.
		if cur, err := os.ReadFile(filepath.Join(in.ConfDir, res.Name)); err == nil {
			if doc, err := scan(res.Name, cur); err != nil || doc.convertedFrom != first {
				return fmt.Errorf("%s must become %s to chain the plugin, but a %s that the installer did not write exists: "+
					"remove one of them (the runtime reads %s)", first, res.Name, res.Name, first)
			}
		}
	}
	if err := writeAtomic(filepath.Join(in.ConfDir, res.Name), res.Data, mode); err != nil {
		return err
	}
	if res.Replaces != "" && res.Name != res.Replaces {
		if err := os.Remove(filepath.Join(in.ConfDir, res.Replaces)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	in.wrote("conflist")
	in.Log.Info("chained podidentity-cni into the runtime's CNI configuration", "file", res.Name, "from", first)
	return nil
}

// Uninstall removes the entry from every configuration file of the conf dir (restoring a converted .conf),
// then the kubeconfig and the binary. It goes on after a failure and reports all of them.
func (in *Installer) Uninstall() error {
	var errs []error
	names, err := confNames(in.ConfDir)
	errs = append(errs, err)
	for _, name := range names {
		if !IsConfFile(name) {
			continue
		}
		path := filepath.Join(in.ConfDir, name)
		data, mode, err := readWithMode(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if has, err := HasEntry(name, data); err != nil || !has {
			continue // not ours to touch, or nothing to remove
		}
		res, err := Unchain(name, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := writeAtomic(filepath.Join(in.ConfDir, res.Name), res.Data, mode); err != nil {
			errs = append(errs, err)
			continue
		}
		if res.Replaces != "" && res.Replaces != res.Name {
			errs = append(errs, removeIfExists(filepath.Join(in.ConfDir, res.Replaces)))
		}
		in.Log.Info("removed podidentity-cni from the CNI configuration", "file", res.Name)
	}
	errs = append(errs,
		removeIfExists(in.KubeconfigPath()),
		removeIfExists(filepath.Join(in.BinDir, pluginconf.PluginType)))
	in.setReady(errors.New("uninstalled"))
	return errors.Join(errs...)
}

// Run keeps the node's state right until ctx ends: it syncs at once, then on every change in the conf or bin
// dir (fsnotify: the primary CNI rewriting its file must be answered in milliseconds, since a pod sandbox
// created meanwhile starts unprotected and waits for the repair), and every resync interval (for the token,
// which the kubelet rotates in place, and in case events were lost: a directory replaced, the inotify queue
// overflowing). Writing only when the content differs keeps the installer's own writes from looping.
func (in *Installer) Run(ctx context.Context, resync time.Duration) {
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		in.Log.Error(err, "cannot watch the CNI directories; relying on the resync interval", "interval", resync.String())
	}
	watched := map[string]bool{}
	watch := func() {
		if watcher == nil {
			return
		}
		for _, dir := range []string{in.ConfDir, in.BinDir} {
			if watched[dir] {
				continue
			}
			if err := watcher.Add(dir); err == nil {
				watched[dir] = true
			}
		}
	}
	var events <-chan fsnotify.Event
	var werrs <-chan error
	if watcher != nil {
		defer watcher.Close()
		events, werrs = watcher.Events, watcher.Errors
	}
	sync := func(why string) {
		watch()
		if err := in.Sync(); err != nil {
			in.Log.Error(err, "the podidentity-cni plugin is not installed; new pods of this node may start without their IMDS protection until it is", "trigger", why)
		}
	}
	sync("start")
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	// A burst of events (a tool writing a temporary file and renaming it) is answered once.
	const settle = 100 * time.Millisecond
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0 && (ev.Name == in.ConfDir || ev.Name == in.BinDir) {
				delete(watched, ev.Name)
			}
			if pending == nil {
				pending = time.After(settle)
			}
		case err, ok := <-werrs:
			if !ok {
				werrs = nil
				continue
			}
			in.Log.Error(err, "watching the CNI directories; the resync interval catches up")
		case <-pending:
			pending = nil
			sync("change")
		case <-ticker.C:
			sync("resync")
		}
	}
}

func confNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() || e.Type()&fs.ModeSymlink != 0 {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func readWithMode(path string) ([]byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	data, err := io.ReadAll(f)
	return data, st.Mode().Perm(), err
}

// writeAtomic writes data to a temporary file in path's directory, whose name no runtime reads (no .conf,
// .conflist or .json ending), flushes it, and renames it over path: a reader sees the old file or the new
// one, never a part.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+hex.EncodeToString(rnd[:])+".podidentity-tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode) // the umask may have cut the mode at creation
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
