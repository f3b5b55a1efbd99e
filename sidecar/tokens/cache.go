package tokens

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/podidentity/podidentity/internal/contract"
)

// Fetcher obtains a fresh token for an identity and resource.
type Fetcher interface {
	Fetch(ctx context.Context, id contract.Identity, resource string) (Token, error)
}

// FetcherFunc adapts a function to Fetcher.
type FetcherFunc func(ctx context.Context, id contract.Identity, resource string) (Token, error)

// Fetch calls f.
func (f FetcherFunc) Fetch(ctx context.Context, id contract.Identity, resource string) (Token, error) {
	return f(ctx, id, resource)
}

// Options configure a Cache. Zero values take the defaults noted.
type Options struct {
	// MinValidity: a cached token that expires within it is never served (default 5 min).
	MinValidity time.Duration
	// RefreshAhead: a token that expires within it is refreshed in the background while still served
	// (default 15 min; it must exceed MinValidity). IMDS itself caches a token for most of its lifetime, so an
	// earlier refresh would only return the same token.
	RefreshAhead time.Duration
	// RetryInterval spaces background refresh attempts of one entry, and bounds how often bypass_cache may
	// force a fetch (default 30 s).
	RetryInterval time.Duration
	// FetchTimeout bounds one collapsed fetch, which outlives the request that started it (default 60 s).
	FetchTimeout time.Duration
	// MaxEntries bounds the cache; beyond it, entries that can no longer be served are dropped first, then
	// arbitrary ones (default 256).
	MaxEntries int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnRefresh, when set, is called after every background refresh attempt (for logs and tests).
	OnRefresh func(key Key, err error)
}

// Key identifies a cache entry: the identity (namespace, name, client ID and tenant, so that an identity whose
// client ID changes never gets the old one's token, and a service principal's token of an auxiliary tenant is
// not its primary tenant's), its backend (an identity switched between the node and federation never gets the
// other backend's token) and the resource exactly as requested.
type Key struct {
	Namespace, Name, ClientID, TenantID, Backend, Resource string
}

func (k Key) String() string {
	return k.Namespace + "/" + k.Name + "|" + k.ClientID + "|" + k.TenantID + "|" + k.Backend + "|" + k.Resource
}

type entry struct {
	token       Token
	lastAttempt time.Time
}

// Cache is a token cache in front of a Fetcher.
type Cache struct {
	fetch Fetcher
	opts  Options
	group singleflight.Group

	mu      sync.RWMutex
	entries map[Key]*entry
}

// NewCache returns a cache in front of fetch.
func NewCache(fetch Fetcher, opts Options) *Cache {
	if opts.MinValidity <= 0 {
		opts.MinValidity = 5 * time.Minute
	}
	if opts.RefreshAhead <= opts.MinValidity {
		opts.RefreshAhead = max(15*time.Minute, opts.MinValidity*3)
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 30 * time.Second
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = 60 * time.Second
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 256
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Cache{fetch: fetch, opts: opts, entries: map[Key]*entry{}}
}

// KeyOf returns the cache key of an identity and resource.
func KeyOf(id contract.Identity, resource string) Key {
	return Key{Namespace: id.Namespace, Name: id.Name, ClientID: id.ClientID, TenantID: id.TenantID, Backend: id.Backend, Resource: resource}
}

// Get returns a token valid for at least MinValidity, from the cache when it holds one (hit = true), else from
// one fetch shared by every concurrent caller of the same key. bypass asks for a fresh token, honoured at most
// once per RetryInterval per key.
func (c *Cache) Get(ctx context.Context, id contract.Identity, resource string, bypass bool) (tok Token, hit bool, err error) {
	key := KeyOf(id, resource)
	now := c.opts.Now()
	c.mu.RLock()
	e, ok := c.entries[key]
	var cached Token
	var last time.Time
	if ok {
		cached, last = e.token, e.lastAttempt
	}
	c.mu.RUnlock()
	if ok && cached.ExpiresOn.Sub(now) > c.opts.MinValidity && !(bypass && now.Sub(last) >= c.opts.RetryInterval) {
		if cached.ExpiresOn.Sub(now) <= c.opts.RefreshAhead && now.Sub(last) >= c.opts.RetryInterval {
			c.refreshInBackground(key, id, resource)
		}
		return cached, true, nil
	}
	ch := c.group.DoChan(key.String(), func() (any, error) { return c.fill(key, id, resource) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return Token{}, false, r.Err
		}
		return r.Val.(Token), false, nil
	case <-ctx.Done():
		return Token{}, false, ctx.Err()
	}
}

// fill fetches and stores a token. It runs detached from any one request: the callers it serves may go away.
func (c *Cache) fill(key Key, id contract.Identity, resource string) (Token, error) {
	c.mu.Lock()
	if e, ok := c.entries[key]; ok {
		e.lastAttempt = c.opts.Now()
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.FetchTimeout)
	defer cancel()
	tok, err := c.fetch.Fetch(ctx, id, resource)
	if err != nil {
		return Token{}, err
	}
	c.store(key, tok)
	return tok, nil
}

func (c *Cache) refreshInBackground(key Key, id contract.Identity, resource string) {
	c.mu.Lock()
	if e, ok := c.entries[key]; ok {
		if c.opts.Now().Sub(e.lastAttempt) < c.opts.RetryInterval {
			c.mu.Unlock()
			return // another caller just started it
		}
		e.lastAttempt = c.opts.Now()
	}
	c.mu.Unlock()
	go func() {
		_, err, _ := c.group.Do(key.String(), func() (any, error) { return c.fill(key, id, resource) })
		if c.opts.OnRefresh != nil {
			c.opts.OnRefresh(key, err)
		}
	}()
}

func (c *Cache) store(key Key, tok Token) {
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.opts.MaxEntries {
		for k, e := range c.entries {
			if e.token.ExpiresOn.Sub(now) <= c.opts.MinValidity {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.opts.MaxEntries {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = &entry{token: tok, lastAttempt: now}
}

// Len returns the number of cached entries.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
