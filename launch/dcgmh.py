r"""Train and evaluate DCGMH (multi-modal hashing under noisy labels).

With no flags: trains on the embedded synthetic data (small widths) in about
two minutes on a CPU, logs the noise filter's precision/recall per epoch, and
prints the fused-code mAP per evaluation and a final table.

  nhj-dcgmh                                                    # synthetic demo
  nhj-dcgmh --config=configs/dcgmh.py:mirflickr25k --config.data_dir=/data/mir \
      --config.layout=dcgmh_mat --config.noise_ratio=auto --workdir=runs/mir_dcgmh

Re-running a command with the same --workdir resumes.
"""

from launch import cli

cli.define_flags("dcgmh")


def cli_main():
  cli.run_main(cli.trainer_main("dcgmh"))


if __name__ == "__main__":
  cli_main()
