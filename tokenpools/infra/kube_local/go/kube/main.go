// Command kube is kube-apiserver, kube-controller-manager and kube-scheduler in one binary
// (hyperkube style), so that the three share one link and one ~copy of client-go & co:
//
//	kube apiserver ...           kube controller-manager ...           kube scheduler ...
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	commands := map[string]func() *cobra.Command{
		"apiserver":          func() *cobra.Command { return apiserver.NewAPIServerCommand() },
		"controller-manager": func() *cobra.Command { return controllermanager.NewControllerManagerCommand() },
		"scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	}
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: kube apiserver|controller-manager|scheduler [flags]")
		os.Exit(2)
	}
	command := commands[os.Args[1]]()
	command.SetArgs(os.Args[2:]) // each command sees only its own flags, not the sub-command name
	os.Exit(cli.Run(command))
}
