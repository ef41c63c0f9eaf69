"""hald entry point: `python src/run.py [key=value ...]`, `python src/run.py -m slc=10,20,50` (= `hald run ...`)."""
from hald.app import main

if __name__ == "__main__":
    main()
