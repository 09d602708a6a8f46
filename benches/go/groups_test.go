// The Go side of benches/groups.rs: errgroup's WithContext, Go and Wait, spawning 100,000
// goroutines that each wait for the group's context, then cancelling it and waiting for all.
//
// golang.org/x/sync is not in Go's standard library and no Go module can be fetched here, so
// `group` below does what errgroup.Group does on this path, in the same way: a WaitGroup, a
// context cancelled with a cause, and the first error kept once.
package groups

import (
	"context"
	"errors"
	"sync"
	"testing"
)

const tasks = 100_000

type group struct {
	wg      sync.WaitGroup
	cancel  context.CancelCauseFunc
	errOnce sync.Once
	err     error
}

func withContext(parent context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancelCause(parent)
	return &group{cancel: cancel}, ctx
}

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.errOnce.Do(func() {
				g.err = err
				g.cancel(err)
			})
		}
	}()
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel(g.err)
	return g.err
}

var errShutdown = errors.New("bench")

func BenchmarkGroupSpawnThenShutdown(b *testing.B) {
	for i := 0; i < b.N; i++ {
		g, ctx := withContext(context.Background())
		for j := 0; j < tasks; j++ {
			g.Go(func() error {
				<-ctx.Done()
				return nil
			})
		}
		g.cancel(errShutdown)
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}
